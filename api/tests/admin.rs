//! `/v1/admin/…` without the page: admins only, every refusal a
//! problem+json that changes nothing, every action recorded, an action on
//! an order that moved meanwhile refused.

mod helpers;

use std::time::Duration;

use api::admission::Limits;
use fred::prelude::*;
use helpers::{Reply, TestApp, order_body, strings};
use serde_json::{Value, json};

async fn app() -> TestApp {
    helpers::spawn_app_configured(Limits::default(), |config| {
        // The archiver runs (the search reads its projections).
        config.live_retention = Some(Duration::from_secs(1800));
    })
    .await
}

/// An order paid and waiting for a restaurant that does not auto-approve.
async fn awaiting_decision(app: &TestApp, key: &str) -> String {
    let customer = app.customer("dora");
    let id = app
        .place_ok(&customer, key, order_body("slow", &[("soup", 2)], 1_600))
        .await;
    app.wait_for(&id, &customer, |o| o["status"] == "PAID")
        .await;
    id
}

async fn stock(app: &TestApp) -> i64 {
    let menu = app.engine.menu("slow").await.unwrap().unwrap();
    menu.items.iter().find(|i| i.item == "soup").unwrap().stock
}

#[tokio::test]
async fn only_admins_reach_the_admin_endpoints() {
    let app = app().await;
    let customer = app.customer("eve");
    let restaurant = app.restaurant("slow");
    for path in [
        "/v1/admin/overview",
        "/v1/admin/orders",
        "/v1/admin/stuck",
        "/v1/admin/dead-letters",
        "/v1/admin/actions",
    ] {
        app.get(path, &customer).await.problem(403, "forbidden");
        app.get(path, &restaurant).await.problem(403, "forbidden");
        let anonymous = app.raw(reqwest::Method::GET, path, None, &[], None).await;
        anonymous.problem(401, "unauthorized");
        app.get(path, &app.admin()).await.ok(200);
    }
    let body = json!({"action": "compensate", "orders": [{"id": uuid::Uuid::nil(), "version": 1}], "reason": "x"});
    app.post("/v1/admin/sagas", &customer, Some(body))
        .await
        .problem(403, "forbidden");
}

#[tokio::test]
async fn a_stuck_saga_is_listed_with_its_step_and_compensated_only_at_the_version_seen() {
    let app = app().await;
    app.seed("slow", false, &[("soup", 800, 10)]).await;
    let id = awaiting_decision(&app, "stuck-1").await;
    assert_eq!(stock(&app).await, 8);
    let admin = app.admin();

    let stuck = app.get_ok("/v1/admin/stuck?older_than=0s", &admin).await;
    let saga = stuck["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(saga["waiting_on"], "restaurant decision", "{saga}");
    let version = saga["version"].as_u64().unwrap();
    let none = app.get_ok("/v1/admin/stuck?older_than=1h", &admin).await;
    assert!(none["sagas"].as_array().unwrap().is_empty(), "{none}");

    // Refusals change nothing and record nothing.
    let act = |action: &str, version: u64, reason: Option<&str>| {
        let mut body = json!({"action": action, "orders": [{"id": id, "version": version}]});
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        body
    };
    let sagas = |body: Value| app.post("/v1/admin/sagas", &admin, Some(body));
    // The first order's result of a batch answered 200.
    let first_result = |reply: Reply| reply.ok(200)["results"][0].clone();
    let empty_batch = json!({"action": "compensate", "orders": [], "reason": "x"});
    for (body, status, code) in [
        (act("compensate", version, None), 422, "reason_required"),
        (
            act("compensate", version, Some("  ")),
            422,
            "reason_required",
        ),
        (empty_batch, 422, "invalid_batch"),
        (act("explode", version, Some("x")), 400, "invalid_body"),
    ] {
        sagas(body).await.problem(status, code);
    }
    assert_eq!(stock(&app).await, 8);

    // Re-drive takes only a step the saga owes: this one waits on the
    // restaurant's own decision, so it is refused and nothing changes.
    let result = first_result(sagas(act("redrive", version, Some("nudge it"))).await);
    assert_eq!(result["code"], "not_redrivable", "{result}");
    assert_eq!(
        (result["status"].as_str(), result["version"].as_u64()),
        (Some("PAID"), Some(version))
    );
    assert_eq!(stock(&app).await, 8);

    // Seen at an older version: refused, not forced.
    let result = first_result(sagas(act("compensate", version - 1, Some("customer called"))).await);
    assert_eq!(
        (result["outcome"].as_str(), result["code"].as_str()),
        (Some("refused"), Some("order_moved")),
        "{result}"
    );
    assert_eq!(result["status"], "PAID");
    assert_eq!(stock(&app).await, 8);

    let result = first_result(sagas(act("compensate", version, Some("customer called"))).await);
    assert_eq!(result["outcome"], "done", "{result}");
    let order = app
        .wait_for(&id, &admin, |o| o["payment"]["status"] == "VOIDED")
        .await;
    assert_eq!(order["status"], "REJECTED");
    assert_eq!(stock(&app).await, 10, "the stock came back");

    // A settled order is not re-driven.
    let now = app.get_ok(&format!("/v1/admin/orders/{id}"), &admin).await["order"]["version"]
        .as_u64()
        .unwrap();
    let again = first_result(sagas(act("redrive", now, Some("again"))).await);
    assert_eq!(again["code"], "order_settled");

    // Every action, refused or not, is in the audit trail, newest first.
    let audit = app
        .get_ok(&format!("/v1/admin/actions?order={id}"), &admin)
        .await;
    let expected = [
        ("redrive", "refused"),
        ("compensate", "done"),
        ("compensate", "refused"),
        ("redrive", "refused"),
    ];
    assert_eq!(actions_and_outcomes(&audit), expected, "{audit}");
    assert!(
        strings(&audit["actions"], "actor")
            .iter()
            .all(|a| *a == "ops")
    );
}

/// `(action, outcome)` of every action an audit answer lists.
fn actions_and_outcomes(audit: &Value) -> Vec<(&str, &str)> {
    let actions = &audit["actions"];
    let outcomes = strings(actions, "outcome");
    strings(actions, "action")
        .into_iter()
        .zip(outcomes)
        .collect()
}

#[tokio::test]
async fn orders_are_found_by_id_customer_restaurant_and_status() {
    let app = app().await;
    app.seed("slow", false, &[("soup", 800, 10)]).await;
    let id = awaiting_decision(&app, "find-1").await;
    let admin = app.admin();
    let by_id = app
        .get_ok(&format!("/v1/admin/orders?id={id}"), &admin)
        .await;
    assert_eq!(by_id["orders"][0]["order_id"], id.as_str());
    assert_eq!(by_id["orders"][0]["source"], "live");
    // The projections trail Redis by the archiver's lag.
    let search = "/v1/admin/orders?customer=dora&restaurant=slow&status=paid";
    let found = fixture::eventually(Duration::from_secs(30), "found", || async {
        let found = app.get_ok(search, &admin).await;
        match found["orders"].as_array().unwrap().len() {
            1 => Ok(found),
            _ => Err(format!("never found: {found}")),
        }
    })
    .await;
    assert_eq!(found["orders"][0]["order_id"], id.as_str());
    let nobody = app.get_ok("/v1/admin/orders?customer=nobody", &admin).await;
    assert_eq!(nobody["orders"], json!([]));
    let missing = format!("/v1/admin/orders/{}", uuid::Uuid::now_v7());
    for (path, status, code) in [
        ("/v1/admin/orders?status=LOST", 400, "invalid_query"),
        ("/v1/admin/orders?older_than=soon", 400, "invalid_query"),
        ("/v1/admin/stuck?older_than=100000d", 400, "invalid_query"),
        ("/v1/admin/orders?colour=red", 400, "invalid_query"),
        ("/v1/admin/orders?limit=-5x", 400, "invalid_query"),
        (missing.as_str(), 404, "order_not_found"),
        ("/v1/admin/orders/not-an-id", 404, "order_not_found"),
    ] {
        app.get(path, &admin).await.problem(status, code);
    }

    let detail = app.get_ok(&format!("/v1/admin/orders/{id}"), &admin).await;
    assert_eq!(detail["order"]["waiting_on"], "restaurant decision");
    assert_eq!(detail["payment"]["provider"]["state"], "authorized");
    assert_eq!(detail["payment"]["agrees"], true);
    let kinds = strings(&detail["timers"], "kind");
    assert_eq!(kinds, ["approval_timeout"], "{detail}");
    let types = strings(&detail["events"], "type");
    assert_eq!(types, ["OrderPlaced", "PaymentAuthorized"]);
}

/// A dead letter written the way a worker gives up on an entry: listed
/// with its reason, resolved with a note, then gone from the list and
/// trimmable; an unknown entry is a 404.
#[tokio::test]
async fn a_dead_letter_is_resolved_with_a_note() {
    let app = app().await;
    let admin = app.admin();
    let keys = app.engine.keys().clone();
    let dead = keys.stream(2, engine::keys::Topic::Dead);
    let fields: Vec<(&str, &str)> = vec![
        ("source", "lr:{p2}:orders"),
        ("source_id", "1-1"),
        ("group", "payment"),
        ("reason", "malformed event: no type"),
        ("deliveries", "5"),
        ("f.v", "1"),
    ];
    let id: String = app
        .engine
        .redis()
        .xadd(&dead, false, None, "*", fields)
        .await
        .unwrap();
    let letters = app.get_ok("/v1/admin/dead-letters", &admin).await;
    let listed = &letters["letters"][0];
    assert_eq!(
        (listed["id"].as_str(), listed["reason"].as_str()),
        (Some(id.as_str()), Some("malformed event: no type"))
    );
    assert_eq!(listed["deliveries"], 5);
    assert_eq!(listed["partition"], 2);

    let path = format!("/v1/admin/dead-letters/dead/2/{id}");
    let (resolve, retry) = (format!("{path}/resolve"), format!("{path}/retry"));
    let with_reason = |path: &str, reason: &str| {
        let (path, body) = (path.to_string(), json!({ "reason": reason }));
        let (app, admin) = (&app, &admin);
        async move { app.post(&path, admin, Some(body)).await }
    };
    app.post(&resolve, &admin, Some(json!({})))
        .await
        .problem(422, "reason_required");
    // A retry of an entry no handler can read fails and keeps it.
    with_reason(&retry, "try")
        .await
        .problem(409, "retry_failed");
    let listed = app.get_ok("/v1/admin/dead-letters", &admin).await;
    assert_eq!(listed["letters"].as_array().unwrap().len(), 1);
    let resolved = with_reason(&resolve, "bad producer, fixed in 1.4").await;
    assert_eq!(resolved.ok(200)["resolved"], true);
    let listed = app.get_ok("/v1/admin/dead-letters", &admin).await;
    assert_eq!(listed["letters"], json!([]));
    with_reason(&resolve, "twice")
        .await
        .problem(404, "letter_not_found");
    for (letter, status, code) in [
        ("dead/2/99-0", 404, "letter_not_found"),
        ("ghost/2/1-0", 404, "letter_not_found"),
        ("dead/999/1-0", 404, "letter_not_found"),
        ("dead/x/1-0", 400, "invalid_path"),
    ] {
        let retry = format!("/v1/admin/dead-letters/{letter}/retry");
        with_reason(&retry, "x").await.problem(status, code);
    }

    // Nothing holds the entry any more: the operator group acknowledged it.
    let groups = engine::streams::group_infos(app.engine.redis(), &dead)
        .await
        .unwrap();
    let operator = groups
        .iter()
        .find(|g| g.name == engine::ops::DEAD_GROUP)
        .unwrap();
    assert_eq!(operator.pending, 0);
    assert!(operator.last_delivered >= engine::streams::parse_entry_id(&id).unwrap());

    let audit = app.get_ok("/v1/admin/actions", &admin).await;
    let summary = actions_and_outcomes(&audit);
    assert_eq!(
        summary,
        [("resolve", "done"), ("retry", "failed")],
        "{audit}"
    );
    let newest = &audit["actions"][0];
    assert_eq!(newest["subject"], format!("dead/2/{id}"));
    assert_eq!(newest["reason"], "bad producer, fixed in 1.4");
}
