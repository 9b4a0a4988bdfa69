//! Restaurants and menus: upserts through their scripts, reads by HGETALL.

use super::*;

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
            "put",
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
        self.upsert_restaurant("patch", restaurant, None, open, auto_approve, lane)
            .await
    }

    async fn upsert_restaurant(
        &self,
        mode: &str,
        restaurant: &str,
        name: Option<&str>,
        open: Option<bool>,
        auto_approve: Option<bool>,
        lane: Lane,
    ) -> Result<(), MenuError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let reply = self
            .scripts()
            .restaurant_upsert
            .call(
                self.redis(),
                vec![
                    keys.restaurant(p, restaurant),
                    keys.restaurants(p),
                    keys.lane_stream(p, Topic::Menu, lane),
                ],
                vec![
                    mode.into(),
                    restaurant.into(),
                    name.unwrap_or("").into(),
                    open.map(flag).unwrap_or_default(),
                    auto_approve.map(flag).unwrap_or_default(),
                ],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            _ => Err(MenuError::RestaurantNotFound(restaurant.to_string())),
        }
    }

    /// Creates or replaces a menu item; `stock` becomes the units on hand.
    pub async fn put_item(
        &self,
        restaurant: &str,
        item: &str,
        put: &ItemPut,
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        self.upsert_item(
            "put",
            restaurant,
            item,
            [
                put.name.clone(),
                put.price.to_string(),
                put.stock.to_string(),
                flag(put.available),
                put.max_per_customer.unwrap_or(0).to_string(),
            ],
            lane,
        )
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
        self.upsert_item(
            "patch",
            restaurant,
            item,
            [
                patch.name.clone().unwrap_or_default(),
                patch.price.map(|p| p.to_string()).unwrap_or_default(),
                patch.stock_delta.map(|d| d.to_string()).unwrap_or_default(),
                patch.available.map(flag).unwrap_or_default(),
                patch
                    .max_per_customer
                    .map(|m| m.unwrap_or(0).to_string())
                    .unwrap_or_default(),
            ],
            lane,
        )
        .await
    }

    async fn upsert_item(
        &self,
        mode: &str,
        restaurant: &str,
        item: &str,
        fields: [String; 5],
        lane: Lane,
    ) -> Result<MenuItem, MenuError> {
        let keys = self.keys();
        let p = keys.partition_of_restaurant(restaurant);
        let mut args = vec![mode.to_string(), restaurant.to_string(), item.to_string()];
        args.extend(fields);
        args.push(MENU_ITEMS_MAX.to_string());
        args.push(crate::domain::STOCK_MAX.to_string());
        let reply = self
            .scripts()
            .menu_upsert
            .call(
                self.redis(),
                vec![
                    keys.restaurant(p, restaurant),
                    keys.items(p, restaurant),
                    keys.item(p, restaurant, item),
                    keys.lane_stream(p, Topic::Menu, lane),
                ],
                args,
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") if reply.len() == 6 => Ok(MenuItem {
                item: item.to_string(),
                name: reply[1].clone(),
                price: reply[2].parse().unwrap_or(0),
                stock: reply[3].parse().unwrap_or(0),
                available: reply[4] == "1",
                max_per_customer: reply[5].parse().ok().filter(|&m: &i64| m > 0),
                supplied: 0,
                stock_version: 0,
            }),
            Some("err") => Err(match reply.get(1).map(String::as_str) {
                Some("restaurant_not_found") => MenuError::RestaurantNotFound(restaurant.into()),
                Some("item_not_found") => MenuError::ItemNotFound(item.into()),
                Some("stock_negative") => MenuError::StockNegative,
                Some("stock_too_high") => MenuError::StockTooHigh,
                Some("menu_full") => MenuError::MenuFull,
                _ => MenuError::Engine(EngineError::Reply {
                    script: "menu_upsert",
                    reply,
                }),
            }),
            _ => Err(MenuError::Engine(EngineError::Reply {
                script: "menu_upsert",
                reply,
            })),
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
