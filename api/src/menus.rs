//! Restaurants and menus: the read model order placement checks.
//!
//! ```text
//! PUT   /v1/restaurants/{rid}              admin            {name, open, auto_approve}
//! PATCH /v1/restaurants/{rid}              owner, admin     {open?, auto_approve?}
//! PUT   /v1/restaurants/{rid}/menu/{item}  owner, admin     {name, price, stock, available, max_per_customer?}
//! PATCH /v1/restaurants/{rid}/menu/{item}  owner, admin     {name?, price?, available?, stock_delta?, max_per_customer?}
//! GET   /v1/restaurants/{rid}/menu         any role
//! ```

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engine::domain::{self, Menu, STOCK_MAX};
use engine::engine::{ItemPatch, ItemPut, MenuError};
use engine::keys::Lane;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Role;
use crate::extract::{Auth, Json, Path};
use crate::problem::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestaurantPut {
    name: String,
    open: bool,
    auto_approve: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestaurantPatch {
    open: Option<bool>,
    auto_approve: Option<bool>,
}

/// The body of `PUT /v1/restaurants/{rid}/menu/{item}` (and one item of a
/// `lunchrush import` line).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPutBody {
    pub name: String,
    pub price: i64,
    pub stock: i64,
    pub available: bool,
    #[serde(default)]
    pub max_per_customer: Option<i64>,
}

impl ItemPutBody {
    /// The item, validated: the precise problem otherwise.
    pub fn validate(&self) -> Result<ItemPut, Problem> {
        Ok(ItemPut {
            name: domain::parse_name("name", &self.name)?,
            price: domain::parse_price("price", self.price)?,
            stock: domain::parse_stock("stock", self.stock)?,
            available: self.available,
            max_per_customer: max_per_customer(self.max_per_customer)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemPatchBody {
    name: Option<String>,
    price: Option<i64>,
    available: Option<bool>,
    stock_delta: Option<i64>,
    /// `0` removes the limit.
    max_per_customer: Option<i64>,
}

fn path_id(field: &str, value: &str) -> Result<String, Problem> {
    domain::parse_id(field, value).map_err(|e| Problem::bad_request("invalid_path", e.to_string()))
}

fn max_per_customer(value: Option<i64>) -> Result<Option<i64>, Problem> {
    match value {
        None | Some(0) => Ok(None),
        Some(n) if (1..=i64::from(domain::QUANTITY_MAX) * 100).contains(&n) => Ok(Some(n)),
        Some(_) => Err(Problem::unprocessable(
            "invalid_field",
            "max_per_customer: must be between 1 and 9900, or 0 / absent for no limit",
        )),
    }
}

fn menu_problem(error: MenuError) -> Problem {
    match error {
        MenuError::RestaurantNotFound(rid) => Problem::not_found(
            "restaurant_not_found",
            format!("restaurant {rid} does not exist"),
        ),
        MenuError::ItemNotFound(item) => {
            Problem::not_found("item_not_found", format!("item {item} does not exist"))
        }
        MenuError::StockNegative => Problem::conflict(
            "stock_below_held",
            "the stock change would take units on hand below zero (units held by orders are never touched)",
        ),
        MenuError::StockTooHigh => Problem::conflict(
            "stock_too_high",
            format!("the stock change would take units on hand above {STOCK_MAX}"),
        ),
        MenuError::MenuFull => Problem::conflict("menu_full", error.to_string()),
        MenuError::Engine(e) => e.into(),
    }
}

async fn menu_response(
    state: &AppState,
    rid: &str,
    status: StatusCode,
) -> Result<Response, Problem> {
    let menu: Menu = state.engine.menu(rid).await?.ok_or_else(|| {
        Problem::not_found(
            "restaurant_not_found",
            format!("restaurant {rid} does not exist"),
        )
    })?;
    Ok((status, axum::Json(menu)).into_response())
}

pub async fn put_restaurant(
    State(state): State<AppState>,
    auth: Auth,
    Path(rid): Path<String>,
    Json(body): Json<RestaurantPut>,
) -> Result<Response, Problem> {
    auth.require(&[Role::Admin], "create or replace restaurants")?;
    let rid = path_id("restaurant id", &rid)?;
    let name = domain::parse_name("name", &body.name)?;
    state
        .engine
        .put_restaurant(&rid, &name, body.open, body.auto_approve, Lane::Online)
        .await
        .map_err(menu_problem)?;
    menu_response(&state, &rid, StatusCode::OK).await
}

pub async fn patch_restaurant(
    State(state): State<AppState>,
    auth: Auth,
    Path(rid): Path<String>,
    Json(body): Json<RestaurantPatch>,
) -> Result<Response, Problem> {
    let rid = path_id("restaurant id", &rid)?;
    auth.require_restaurant(&rid)?;
    state
        .engine
        .patch_restaurant(&rid, body.open, body.auto_approve, Lane::Online)
        .await
        .map_err(menu_problem)?;
    menu_response(&state, &rid, StatusCode::OK).await
}

pub async fn put_item(
    State(state): State<AppState>,
    auth: Auth,
    Path((rid, item)): Path<(String, String)>,
    Json(body): Json<ItemPutBody>,
) -> Result<Response, Problem> {
    let rid = path_id("restaurant id", &rid)?;
    let item = path_id("item id", &item)?;
    auth.require_restaurant(&rid)?;
    let put = body.validate()?;
    let item = state
        .engine
        .put_item(&rid, &item, &put, Lane::Online)
        .await
        .map_err(menu_problem)?;
    Ok(axum::Json(item).into_response())
}

pub async fn patch_item(
    State(state): State<AppState>,
    auth: Auth,
    Path((rid, item)): Path<(String, String)>,
    Json(body): Json<ItemPatchBody>,
) -> Result<Response, Problem> {
    let rid = path_id("restaurant id", &rid)?;
    let item = path_id("item id", &item)?;
    auth.require_restaurant(&rid)?;
    if let Some(delta) = body.stock_delta
        && !(-STOCK_MAX..=STOCK_MAX).contains(&delta)
    {
        return Err(Problem::unprocessable(
            "invalid_field",
            format!("stock_delta: must be between -{STOCK_MAX} and {STOCK_MAX}"),
        ));
    }
    let patch = ItemPatch {
        name: body
            .name
            .as_deref()
            .map(|n| domain::parse_name("name", n))
            .transpose()?,
        price: body
            .price
            .map(|p| domain::parse_price("price", p))
            .transpose()?,
        available: body.available,
        stock_delta: body.stock_delta,
        max_per_customer: body
            .max_per_customer
            .map(|m| max_per_customer(Some(m)))
            .transpose()?,
    };
    let item = state
        .engine
        .patch_item(&rid, &item, &patch, Lane::Online)
        .await
        .map_err(menu_problem)?;
    Ok(axum::Json(item).into_response())
}

pub async fn get_menu(
    State(state): State<AppState>,
    _auth: Auth,
    Path(rid): Path<String>,
) -> Result<Response, Problem> {
    let rid = path_id("restaurant id", &rid)?;
    menu_response(&state, &rid, StatusCode::OK).await
}
