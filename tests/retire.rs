//! An order leaves Redis only once every group of its streams is done with
//! it: the archive, and the saga steps still owed. A rejected order whose
//! payment hop has not yet asked the provider about it (the authorization
//! may have been taken while the answer was lost) stays live until it has.

mod common;

use std::time::Duration;

use engine::domain::{PaymentStatus, RejectReason};
use engine::keys::Lane;
use engine::retire::Retired;
use stack::psp::Faults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_saga_owes_a_step_is_not_retired() {
    let mut fx = common::fixture(Faults::default()).await;
    fx.seed(1, 1_000, 10, None).await;
    let request = fx.request("c", "r0", &[("meal", 1)], 1_000, "k");
    let id = fx.engine.place_order(&request).await.unwrap().order_id;
    let order = fx.engine.order(&id).await.unwrap().unwrap();
    let t = fx
        .engine
        .release(&order, RejectReason::PaymentWindow, None, Lane::Online)
        .await
        .unwrap();
    assert!(t.is_done());
    // Rejected without a payment (a final pair) and fully archived; the
    // payment group has not read its events yet.
    let archiver = archiver::Archiver::new(
        fx.engine.clone(),
        fx.pool().clone(),
        archiver::ArchiverOptions::new("test-archiver"),
    );
    archiver.prepare().await.unwrap();
    archiver.drain().await.unwrap();
    let kept = engine::retire::retire(&fx.engine, &id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(kept, Retired::Kept("unhandled".into()));
    assert!(fx.engine.order(&id).await.unwrap().is_some());

    // The payment hop acts and acknowledges; now the order may go. (Its
    // `OrderPlaced` is fresh: the hop may take it at its word and, its
    // restaurant approving automatically, sell before it learns of the
    // rejection, then refund; either way a final pair.)
    fx.start_workers("w");
    fx.drain_groups(Duration::from_secs(30)).await;
    archiver.drain().await.unwrap();
    let retired = engine::retire::retire(&fx.engine, &id, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        matches!(
            retired,
            Retired::Retired {
                pay: PaymentStatus::None | PaymentStatus::Voided | PaymentStatus::Refunded,
                ..
            }
        ),
        "{retired:?}"
    );
    assert!(fx.engine.order(&id).await.unwrap().is_none());
}
