//! Restaurants and menus: upserts through their scripts, reads by HGETALL.

use super::*;
use crate::domain::Upsert;
use crate::scripts::replies::MenuRefusal;
use crate::scripts::{menu_upsert, restaurant_upsert};

/// The item fields a menu write sets (`None`: unchanged).
struct ItemFields {
    name: Option<String>,
    price: Option<i64>,
    /// Put: units on hand; patch: the change.
    stock: Option<i64>,
    available: Option<bool>,
    /// 0: no limit.
    max_pc: Option<i64>,
}

impl Engine {
    /// Creates or replaces a restaurant.
    pub async fn put_restaurant(
        &self,
        restaurant: &str,
        name: &str,
        open: bool,
        auto_approve: bool,
        lane: Lane,
    ) -> Result<(), MenuError> {
        self.upsert_restaurant(
            Upsert::Put,
            restaurant,
            Some(name),
            Some(open),
            Some(auto_approve),
            lane,
        )
        .await
    }

    /// Changes `open` and/or `auto_approve` of an existing restaurant.
    pub async fn patch_restaurant(
        &self,
        restaurant: &str,
        open: Option<bool>,
        auto_approve: Option<bool>,
        lane: Lane,
    ) -> Result<(), MenuError> {
        self.upsert_restaurant(Upsert::Patch, restaurant, None, open, auto_approve, lane)
            .await
    }

    async fn upsert_restaurant(
        &self,
        mode: Upsert,
        restaurant: &str,
        name: Option<&str>,
        open: Option<bool>,
        auto_approve: Option<bool>,
        lane: Lane,
    ) -> Result<(), MenuError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        self.scripts()
            .restaurant_upsert
            .run(
                self.redis(),
                restaurant_upsert::Keys {
                    restaurant_key: keys.restaurant(p, restaurant),
                    set_key: keys.restaurants(p),
                    stream: keys.lane_stream(p, Topic::Menu, lane),
                },
                restaurant_upsert::Args {
                    mode,
                    rid: restaurant.into(),
                    name: name.map(str::to_string),
                    open,
                    auto: auto_approve,
                },
            )
            .await?
            .map_err(|_| MenuError::RestaurantNotFound(restaurant.to_string()))
    }

    /// Creates or replaces a menu item; `stock` becomes the units on hand.
    pub async fn put_item(
        &self,
        restaurant: &str,
        item: &str,
        put: &ItemPut,
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        let fields = ItemFields {
            name: Some(put.name.clone()),
            price: Some(put.price),
            stock: Some(put.stock),
            available: Some(put.available),
            max_pc: Some(put.max_per_customer.unwrap_or(0)),
        };
        self.upsert_item(Upsert::Put, restaurant, item, fields, lane)
            .await
    }

    /// Changes some fields of an existing item atomically.
    pub async fn patch_item(
        &self,
        restaurant: &str,
        item: &str,
        patch: &ItemPatch,
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        let fields = ItemFields {
            name: patch.name.clone(),
            price: patch.price,
            stock: patch.stock_delta,
            available: patch.available,
            max_pc: patch.max_per_customer.map(|m| m.unwrap_or(0)),
        };
        self.upsert_item(Upsert::Patch, restaurant, item, fields, lane)
            .await
    }

    async fn upsert_item(
        &self,
        mode: Upsert,
        restaurant: &str,
        item: &str,
        fields: ItemFields,
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let state = self
            .scripts()
            .menu_upsert
            .run(
                self.redis(),
                menu_upsert::Keys {
                    restaurant_key: keys.restaurant(p, restaurant),
                    items_key: keys.items(p, restaurant),
                    item_key: keys.item(p, restaurant, item),
                    stream: keys.lane_stream(p, Topic::Menu, lane),
                },
                menu_upsert::Args {
                    mode,
                    rid: restaurant.into(),
                    item: item.into(),
                    name: fields.name,
                    price: fields.price,
                    stock: fields.stock,
                    available: fields.available,
                    max_pc: fields.max_pc,
                    menu_max: MENU_ITEMS_MAX as u64,
                    stock_max: crate::domain::STOCK_MAX as u64,
                },
            )
            .await?;
        match state {
            Ok(state) => Ok(MenuItem {
                item: item.to_string(),
                name: state.name,
                price: state.price,
                stock: state.stock,
                available: state.available,
                max_per_customer: state.max_per_customer,
                supplied: 0,
                stock_version: 0,
            }),
            Err(refusal) => Err(match refusal {
                MenuRefusal::RestaurantNotFound => MenuError::RestaurantNotFound(restaurant.into()),
                MenuRefusal::ItemNotFound => MenuError::ItemNotFound(item.into()),
                MenuRefusal::StockNegative => MenuError::StockNegative,
                MenuRefusal::StockTooHigh => MenuError::StockTooHigh,
                MenuRefusal::MenuFull => MenuError::MenuFull,
            }),
        }
    }

    /// The restaurant and its menu, items sorted by id; `None` if unknown.
    pub async fn menu(&self, restaurant: &str) -> Result<Option<Menu>, EngineError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let head: HashMap<String, String> =
            self.redis().hgetall(keys.restaurant(p, restaurant)).await?;
        if head.is_empty() {
            return Ok(None);
        }
        let mut ids: Vec<String> = self.redis().smembers(keys.items(p, restaurant)).await?;
        ids.sort();
        let reads = ids.iter().map(|item| {
            self.redis()
                .hgetall::<HashMap<String, String>, _>(keys.item(p, restaurant, item))
        });
        let fields = futures::future::try_join_all(reads).await?;
        let items = ids
            .into_iter()
            .zip(fields)
            .map(|(item, f)| {
                let int = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                MenuItem {
                    name: f.get("name").cloned().unwrap_or_default(),
                    price: int("price"),
                    stock: int("stock"),
                    available: f.get("available").map(String::as_str) == Some("1"),
                    max_per_customer: Some(int("max_pc")).filter(|&m| m > 0),
                    supplied: int("supplied"),
                    stock_version: int("sv"),
                    item,
                }
            })
            .collect();
        Ok(Some(Menu {
            restaurant_id: restaurant.to_string(),
            name: head.get("name").cloned().unwrap_or_default(),
            open: head.get("open").map(String::as_str) == Some("1"),
            auto_approve: head.get("auto").map(String::as_str) == Some("1"),
            items,
        }))
    }

    /// Restaurant ids of one partition.
    pub async fn restaurants(&self, partition: u16) -> Result<Vec<String>, EngineError> {
        Ok(self
            .redis()
            .smembers(self.keys().restaurants(partition))
            .await?)
    }
}
