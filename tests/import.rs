//! `lunchrush import`: restaurants and menus in bulk through the same atomic
//! scripts as the API, on the batch lane. A bad line is refused with its
//! number and a precise reason and writes nothing; the good lines land.

mod common;

use engine::keys::Topic;
use stack::psp::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_writes_good_lines_on_the_batch_lane_and_refuses_bad_ones() {
    let fx = common::fixture(Faults::default()).await;
    let file = fx.stack().home().join("menus.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"restaurant_id":"imp-1","name":"Noodle Bar","open":true,"auto_approve":true,"items":[{"item":"ramen","name":"Ramen","price":9000,"stock":200,"available":true,"max_per_customer":2},{"item":"gyoza","name":"Gyoza","price":4000,"stock":50,"available":true}]}"#,
            r#"{"restaurant_id":"imp-2","name":"Bad Price","open":true,"auto_approve":true,"items":[{"item":"soup","name":"Soup","price":-5,"stock":10,"available":true}]}"#,
            "",
            r#"{"restaurant_id":"imp-3","name":"Typo","open":true,"auto_approve":true,"itemz":[]}"#,
            r#"{"restaurant_id":"imp-4","name":"Closed","open":false,"auto_approve":false}"#,
            r#"{"restaurant_id":"imp-5","name":"Colour","open":true,"auto_approve":true,"items":[{"item":"tea","name":"Tea","price":100,"stock":1,"available":true,"colour":"red"}]}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let output = common::lunchrush(&fx, &["import", file.to_str().unwrap(), "--max-rate", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("line 2: refused: items[0].price"),
        "the bad price is named with its line: {stdout}"
    );
    assert!(
        stdout.contains("line 4: refused: unknown field `itemz`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 6: refused: items[0]: unknown field `colour`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("imported 2 restaurants, 2 items"),
        "{stdout}"
    );

    let menu = fx
        .engine
        .menu("imp-1")
        .await
        .unwrap()
        .expect("imp-1 imported");
    assert_eq!(menu.items.len(), 2);
    let ramen = menu.items.iter().find(|i| i.item == "ramen").unwrap();
    assert_eq!(
        (ramen.price, ramen.stock, ramen.max_per_customer),
        (9000, 200, Some(2))
    );
    assert!(fx.engine.menu("imp-4").await.unwrap().is_some());
    // Refused lines wrote nothing.
    assert!(fx.engine.menu("imp-2").await.unwrap().is_none());
    assert!(fx.engine.menu("imp-3").await.unwrap().is_none());
    assert!(fx.engine.menu("imp-5").await.unwrap().is_none());
    // The writes' events went to the batch lane, none to the online menu stream.
    let batch = fx.stream_entries(Topic::Batch).await;
    let online = fx.stream_entries(Topic::Menu).await;
    assert_eq!(online, 0);
    assert_eq!(
        batch,
        2 + 2,
        "one event per restaurant and per item written"
    );
}
