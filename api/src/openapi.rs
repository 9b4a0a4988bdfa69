//! `GET /openapi.json`: the whole contract (OpenAPI 3.1). A test checks that
//! its paths and methods are exactly the router's.

use serde_json::{Value, json};

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

fn ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn common_errors(mut responses: Value, with_body: bool) -> Value {
    let map = responses.as_object_mut().expect("responses are an object");
    map.insert("401".into(), problem("missing, invalid or expired token"));
    map.insert(
        "403".into(),
        problem("the role may not do this, or not for this restaurant"),
    );
    map.insert("429".into(), problem("rate limited; see Retry-After"));
    map.entry("503")
        .or_insert_with(|| problem("shed under load or a dependency timed out; see Retry-After"));
    if with_body {
        map.insert(
            "400".into(),
            problem("malformed JSON or a field of the wrong type (the detail names it)"),
        );
        map.insert("413".into(), problem("body over 64 KiB"));
        map.insert(
            "415".into(),
            problem("Content-Type is not application/json"),
        );
        map.insert(
            "422".into(),
            problem("a field is out of range (the detail names it)"),
        );
    }
    responses
}

fn order_action(summary: &str, extra_body: Option<&str>) -> Value {
    let mut op = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [{"$ref": "#/components/parameters/OrderId"}],
        "responses": common_errors(json!({
            "200": ok("the order after the transition (or unchanged if it already happened)", "Order"),
            "404": problem("no such order visible to this token"),
            "409": problem("not possible from the order's current status (code says why)"),
        }), extra_body.is_some()),
    });
    if let Some(schema) = extra_body {
        op["requestBody"] = body(schema);
    }
    op
}

/// The OpenAPI document.
fn base() -> Value {
    let rid = json!({"$ref": "#/components/parameters/RestaurantId"});
    let item = json!({"$ref": "#/components/parameters/ItemId"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "lunchrush",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Food-delivery orders whose payment never disagrees with them. Money is integer won. Every error is application/problem+json with a machine-usable `code`."
        },
        "paths": {
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "the process serves HTTP"}}}},
            "/readyz": {"get": {"summary": "readiness: Redis answers (status ready, or degraded: archive, provider, redis_memory, redis_unwritable)", "responses": {"200": {"description": "ready, or degraded and still taking traffic"}, "503": {"description": "Redis does not answer"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/v1/restaurants/{rid}": {
                "put": {"summary": "create or replace a restaurant (admin)", "security": [{"bearer": []}], "parameters": [rid],
                    "requestBody": body("RestaurantPut"),
                    "responses": common_errors(json!({"200": ok("the restaurant and its menu", "Menu")}), true)},
                "patch": {"summary": "open/close, auto-approve on/off (owner, admin)", "security": [{"bearer": []}], "parameters": [rid],
                    "requestBody": body("RestaurantPatch"),
                    "responses": common_errors(json!({"200": ok("the restaurant and its menu", "Menu"), "404": problem("no such restaurant")}), true)}
            },
            "/v1/restaurants/{rid}/menu": {
                "get": {"summary": "the menu (any role)", "security": [{"bearer": []}], "parameters": [rid],
                    "responses": common_errors(json!({"200": ok("the restaurant and its menu", "Menu"), "404": problem("no such restaurant")}), false)}
            },
            "/v1/restaurants/{rid}/menu/{item}": {
                "put": {"summary": "create or replace a menu item (owner, admin)", "security": [{"bearer": []}], "parameters": [rid, item],
                    "requestBody": body("ItemPut"),
                    "responses": common_errors(json!({"200": ok("the item", "MenuItem"), "404": problem("no such restaurant")}), true)},
                "patch": {"summary": "change price, availability or stock atomically (owner, admin)", "security": [{"bearer": []}], "parameters": [rid, item],
                    "requestBody": body("ItemPatch"),
                    "responses": common_errors(json!({"200": ok("the item", "MenuItem"), "404": problem("no such restaurant or item"), "409": problem("stock_below_held: units on hand would go below zero")}), true)}
            },
            "/v1/orders": {
                "post": {"summary": "place an order (customer)", "security": [{"bearer": []}],
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": true, "schema": {"type": "string", "maxLength": 128},
                        "description": "same key and same body: the first answer again; same key, other body: 422 idempotency_conflict. Kept 25 h."}],
                    "requestBody": body("PlaceOrder"),
                    "responses": common_errors(json!({
                        "202": ok("placed; stock reserved; the saga continues", "Placed"),
                        "409": problem("out_of_stock (items named), restaurant_closed, item_unavailable, limit_exceeded, or price_changed (current_total given)"),
                        "503": problem("nothing reserved; see Retry-After: capacity_exhausted (Redis at its memory budget: orders in flight finish, new ones wait), store_unwritable (Redis refuses writes: a failed AOF write, a failover), payment_unavailable (the provider is failing or the unpaid backlog is too long), overloaded, deadline_exceeded"),
                    }), true)}
            },
            "/v1/orders/{id}": {"get": {"summary": "an order (owner, its restaurant, admin)", "security": [{"bearer": []}],
                "parameters": [{"$ref": "#/components/parameters/OrderId"}],
                "responses": common_errors(json!({"200": ok("the order", "Order"), "404": problem("no such order visible to this token")}), false)}},
            "/v1/orders/{id}/accept": {"post": order_action("the restaurant accepts a paid order", None)},
            "/v1/orders/{id}/reject": {"post": order_action("the restaurant rejects a paid order", Some("Reject"))},
            "/v1/orders/{id}/dispatch": {"post": order_action("delivery started (its restaurant, admin)", None)},
            "/v1/orders/{id}/confirm": {"post": order_action("purchase confirmed (owner, admin)", None)},
            "/v1/orders/{id}/cancel": {"post": order_action("cancel: owner before approval, admin any time (refunds a capture)", None)},
            "/v1/orders/{id}/events": {"get": {"summary": "the order's saga events in sequence", "security": [{"bearer": []}],
                "parameters": [{"$ref": "#/components/parameters/OrderId"}],
                "responses": common_errors(json!({"200": ok("the events", "Events"), "404": problem("no such order visible to this token")}), false)}}
        },
        "components": components(),
    })
}

/// Security schemes, shared parameters and the schemas.
fn components() -> Value {
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (HS256): sub, role customer|restaurant|admin, rid (restaurants), exp"}},
        "parameters": {
            "RestaurantId": {"name": "rid", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/Id"}},
            "ItemId": {"name": "item", "in": "path", "required": true, "schema": {"$ref": "#/components/schemas/Id"}},
            "OrderId": {"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}
        },
        "schemas": {
            "Id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            "Problem": {"type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "code": {"type": "string"},
                "items": {"type": "array", "items": {"type": "string"}}, "current_total": {"type": "integer"}, "path": {"type": "string"}, "field": {"type": "string"},
                "order_status": {"type": "string"}}},
            "RestaurantPut": {"type": "object", "additionalProperties": false, "required": ["name", "open", "auto_approve"], "properties": {
                "name": {"type": "string", "maxLength": 200}, "open": {"type": "boolean"}, "auto_approve": {"type": "boolean"}}},
            "RestaurantPatch": {"type": "object", "additionalProperties": false, "properties": {"open": {"type": "boolean"}, "auto_approve": {"type": "boolean"}}},
            "ItemPut": {"type": "object", "additionalProperties": false, "required": ["name", "price", "stock", "available"], "properties": {
                "name": {"type": "string"}, "price": {"type": "integer", "minimum": 0, "maximum": 10000000},
                "stock": {"type": "integer", "minimum": 0, "maximum": 10000000}, "available": {"type": "boolean"},
                "max_per_customer": {"type": ["integer", "null"], "minimum": 0}}},
            "ItemPatch": {"type": "object", "additionalProperties": false, "properties": {
                "name": {"type": "string"}, "price": {"type": "integer", "minimum": 0}, "available": {"type": "boolean"},
                "stock_delta": {"type": "integer"}, "max_per_customer": {"type": "integer", "minimum": 0}}},
            "MenuItem": {"type": "object", "properties": {"item": {"type": "string"}, "name": {"type": "string"}, "price": {"type": "integer"},
                "stock": {"type": "integer"}, "available": {"type": "boolean"}, "max_per_customer": {"type": ["integer", "null"]}}},
            "Menu": {"type": "object", "properties": {"restaurant_id": {"type": "string"}, "name": {"type": "string"}, "open": {"type": "boolean"},
                "auto_approve": {"type": "boolean"}, "items": {"type": "array", "items": {"$ref": "#/components/schemas/MenuItem"}}}},
            "PlaceOrder": {"type": "object", "additionalProperties": false, "required": ["restaurant_id", "items", "expected_total"], "properties": {
                "restaurant_id": {"$ref": "#/components/schemas/Id"},
                "items": {"type": "array", "minItems": 1, "maxItems": 50, "items": {"type": "object", "additionalProperties": false,
                    "required": ["item", "qty"], "properties": {"item": {"$ref": "#/components/schemas/Id"}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}}}},
                "expected_total": {"type": "integer", "minimum": 0}}},
            "Placed": {"type": "object", "properties": {"order_id": {"type": "string", "format": "uuid"}, "status": {"const": "PENDING"}, "total": {"type": "integer"}}},
            "Order": {"type": "object", "properties": {
                "order_id": {"type": "string", "format": "uuid"}, "customer": {"type": "string"}, "restaurant_id": {"type": "string"},
                "items": {"type": "array", "items": {"type": "object", "properties": {"item": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "integer"}}}},
                "total": {"type": "integer"},
                "status": {"enum": ["PENDING", "PAID", "APPROVED", "DISPATCHED", "CONFIRMED", "REJECTED"]},
                "reason": {"type": ["string", "null"], "description": "payment_declined, restaurant_rejected, approval_timeout, cancelled, reconciled, capture_failed, payment_window, operator"},
                "payment": {"type": "object", "properties": {"status": {"enum": ["NONE", "AUTHORIZED", "CAPTURED", "REFUNDED", "DECLINED", "VOIDED"]}}},
                "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
            "Reject": {"type": "object", "additionalProperties": false, "required": ["reason"], "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500}}},
            "Events": {"type": "object", "properties": {"order_id": {"type": "string"}, "events": {"type": "array", "items": {"type": "object", "properties": {
                "seq": {"type": "integer"}, "type": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
                "stream": {"type": "string"}, "entry_id": {"type": "string"}, "saga_id": {"type": "string"}, "data": {"type": "object"}}}}}}
        }
    })
}

/// The whole document: the v1 routes and the admin routes behind `/ops/`.
pub fn document() -> Value {
    let mut document = base();
    let admin = |summary: &str, extra: Value| {
        let mut op = json!({
            "summary": summary,
            "tags": ["admin"],
            "security": [{"bearer": []}],
            "responses": common_errors(json!({"200": ok("the answer", "AdminAnswer")}), false),
        });
        for (key, value) in extra.as_object().cloned().unwrap_or_default() {
            if key == "responses" {
                for (status, response) in value.as_object().cloned().unwrap_or_default() {
                    op["responses"][status] = response;
                }
            } else {
                op[key] = value;
            }
        }
        op
    };
    let query = |name: &str, description: &str| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}});
    let letter_params = json!([
        {"name": "kind", "in": "path", "required": true, "schema": {"enum": ["dead", "parked"]}},
        {"name": "partition", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}},
        {"name": "id", "in": "path", "required": true, "schema": {"type": "string", "description": "the stream entry id"}}
    ]);
    let with_note = |summary: &str| {
        admin(
            summary,
            json!({
        "parameters": letter_params,
        "requestBody": body("Note"),
        "responses": {"404": problem("no unresolved entry with that id"), "409": problem("the retry failed; the entry stays (retry_failed)"),
                      "422": problem("reason missing or too long")}}),
        )
    };
    let paths = document["paths"].as_object_mut().expect("paths");
    paths.insert("/v1/admin/overview".into(), json!({"get": admin("Rates, latencies, saga funnel, lag, timers, queues, archive, reconciliation runs", json!({}))}));
    paths.insert("/v1/admin/orders".into(), json!({"get": admin("Search orders (newest first)", json!({"parameters": [
        query("id", "an order id (found live or in the archive)"), query("customer", "customer id"), query("restaurant", "restaurant id"),
        query("status", "order status"), query("older_than", "placed at least this long ago (90s, 5m)"), query("limit", "rows, 1..200")]}))}));
    paths.insert("/v1/admin/orders/{id}".into(), json!({"get": admin("One order: timeline, timers, notifications, provider's view, actions", json!({
        "parameters": [{"$ref": "#/components/parameters/OrderId"}], "responses": {"404": problem("no such order")}}))}));
    paths.insert("/v1/admin/stuck".into(), json!({"get": admin("Sagas unsettled longer than an SLA, with the step they wait on", json!({"parameters": [
        query("older_than", "the SLA (default 60s)"), query("limit", "rows, 1..500")]}))}));
    paths.insert("/v1/admin/sagas".into(), json!({"post": admin("Re-drive or compensate a batch of sagas (each refused with order_moved if it changed)", json!({
        "requestBody": body("SagaAction"), "responses": {"400": problem("malformed body"), "422": problem("reason missing, or 0 or over 100 orders")}}))}));
    paths.insert(
        "/v1/admin/dead-letters".into(),
        json!({"get": admin("Unresolved dead letters and parked compensations", json!({}))}),
    );
    paths.insert("/v1/admin/dead-letters/{kind}/{partition}/{id}/retry".into(), json!({"post": with_note("Run the handler that gave up on the entry again; resolved if it succeeds")}));
    paths.insert(
        "/v1/admin/dead-letters/{kind}/{partition}/{id}/resolve".into(),
        json!({"post": with_note("Resolve an entry without retrying it (the reason is recorded)")}),
    );
    paths.insert("/v1/admin/actions".into(), json!({"get": admin("The audit trail of operator actions, newest first", json!({"parameters": [
        query("order", "only this order's"), query("limit", "rows, 1..1000")]}))}));
    let schemas = document["components"]["schemas"]
        .as_object_mut()
        .expect("schemas");
    schemas.insert("AdminAnswer".into(), json!({"type": "object", "description": "see the console (/ops/) for how each answer is shown"}));
    schemas.insert("Note".into(), json!({"type": "object", "additionalProperties": false, "required": ["reason"], "properties": {
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000}}}));
    schemas.insert("SagaAction".into(), json!({"type": "object", "additionalProperties": false, "required": ["action", "orders", "reason"], "properties": {
        "action": {"enum": ["redrive", "compensate"]},
        "orders": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "object", "additionalProperties": false, "required": ["id", "version"],
            "properties": {"id": {"type": "string", "format": "uuid"}, "version": {"type": "integer", "description": "the version the operator saw"}}}},
        "reason": {"type": "string", "minLength": 1, "maxLength": 1000}}}));
    document
}
