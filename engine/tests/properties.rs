//! Property test: random interleavings of placements, menu edits, declines,
//! restaurant decisions, cancellations, compensations, worker steps and
//! redeliveries keep the checker green at every step, and once every saga
//! is driven to rest, every order is in an allowed pair and stock is
//! conserved.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use engine::Engine;
use engine::domain::{Decision, OrderStatus, PlaceOrder};
use engine::engine::{Actor, ItemPatch, ItemPut};
use engine::keys::Lane;
use engine::psp::PspClient;
use engine::saga::{Role, Worker};
use proptest::prelude::*;
use stack::psp::{Faults, PspSim};
use stack::{AppendFsync, RedisOptions, RedisServer};

const ITEMS: [&str; 3] = ["a", "b", "c"];
const RESTAURANTS: [&str; 2] = ["auto", "manual"];

#[derive(Debug, Clone)]
enum Op {
    Place {
        customer: u8,
        restaurant: u8,
        lines: Vec<(u8, u8)>,
        stale_total: bool,
    },
    /// A menu edit: price, stock delta (batch lane, like a bulk import) or availability.
    Edit {
        restaurant: u8,
        item: u8,
        patch: ItemPatch,
        lane: Lane,
    },
    Declines {
        on: bool,
    },
    Decide {
        order: u8,
        approve: bool,
    },
    Cancel {
        order: u8,
        admin: bool,
    },
    Release {
        order: u8,
    },
    Advance {
        order: u8,
        confirm: bool,
    },
    Step {
        role: u8,
    },
    Redeliver {
        order: u8,
    },
}

fn edit() -> impl Strategy<Value = (ItemPatch, Lane)> {
    prop_oneof![
        (1..50i64).prop_map(|price| (
            ItemPatch {
                price: Some(price),
                ..ItemPatch::default()
            },
            Lane::Online
        )),
        (-3..6i64).prop_map(|delta| (
            ItemPatch {
                stock_delta: Some(delta),
                ..ItemPatch::default()
            },
            Lane::Batch
        )),
        any::<bool>().prop_map(|on| (
            ItemPatch {
                available: Some(on),
                ..ItemPatch::default()
            },
            Lane::Online
        )),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6u8, 0..2u8, prop::collection::vec((0..3u8, 1..4u8), 1..3), prop::bool::weighted(0.1))
            .prop_map(|(customer, restaurant, lines, stale_total)| Op::Place { customer, restaurant, lines, stale_total }),
        3 => (0..2u8, 0..3u8, edit()).prop_map(|(restaurant, item, (patch, lane))| Op::Edit { restaurant, item, patch, lane }),
        1 => any::<bool>().prop_map(|on| Op::Declines { on }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(order, approve)| Op::Decide { order, approve }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(order, admin)| Op::Cancel { order, admin }),
        1 => any::<u8>().prop_map(|order| Op::Release { order }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(order, confirm)| Op::Advance { order, confirm }),
        3 => (0..4u8).prop_map(|role| Op::Step { role }),
        1 => any::<u8>().prop_map(|order| Op::Redeliver { order }),
    ]
}

struct World {
    _dir: tempfile::TempDir,
    _redis: RedisServer,
    redis_url: String,
    sim: PspSim,
    psp: PspClient,
    runtime: tokio::runtime::Runtime,
}

static CASE: AtomicU32 = AtomicU32::new(0);

async fn run_case(world: &World, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let config = engine::Config {
        redis_url: world.redis_url.clone(),
        partitions: 2,
        key_prefix: format!("prop{case}:"),
        ..engine::Config::default()
    };
    let client = engine::store::connect(&config).await.unwrap();
    let engine = Engine::new(client, config).await.unwrap();
    engine::saga::ensure_groups(&engine, &Role::ALL.map(|r| (r.group(), r.topics())))
        .await
        .unwrap();
    let workers: Vec<Worker> = Role::ALL
        .iter()
        .map(|&role| {
            Worker::new(
                engine.clone(),
                world.psp.clone(),
                std::sync::Arc::new(engine::notify::LogNotifier),
                role,
                common::fast_options("prop"),
            )
        })
        .collect();
    world.sim.set_faults(Faults::default());
    for (index, rid) in RESTAURANTS.iter().enumerate() {
        engine
            .put_restaurant(rid, rid, true, index == 0, Lane::Online)
            .await
            .unwrap();
        for (i, item) in ITEMS.iter().enumerate() {
            let put = ItemPut {
                name: item.to_string(),
                price: 10 * (i as i64 + 1),
                stock: 6,
                available: true,
                max_per_customer: (i == 2).then_some(3),
            };
            engine
                .put_item(rid, item, &put, Lane::Online)
                .await
                .unwrap();
        }
    }
    let mut orders = Vec::new();
    let mut keys = 0u32;
    for op in ops {
        let pick = |n: u8| (!orders.is_empty()).then(|| orders[n as usize % orders.len()]);
        // The order `n` picks, as it is now (none when none is placed yet).
        let current = async |n: u8| match pick(n) {
            Some(id) => engine.order(&id).await.unwrap(),
            None => None,
        };
        match op {
            Op::Place {
                customer,
                restaurant,
                lines,
                stale_total,
            } => {
                let rid = RESTAURANTS[restaurant as usize];
                let menu = engine.menu(rid).await.unwrap().unwrap();
                let mut seen = std::collections::HashSet::new();
                let lines: Vec<(String, i64)> = lines
                    .into_iter()
                    .filter(|(item, _)| seen.insert(*item))
                    .map(|(item, qty)| (ITEMS[item as usize].to_string(), i64::from(qty)))
                    .collect();
                let total: i64 = lines
                    .iter()
                    .map(|(item, qty)| {
                        menu.items.iter().find(|i| &i.item == item).unwrap().price * qty
                    })
                    .sum::<i64>()
                    + i64::from(stale_total);
                keys += 1;
                let request = PlaceOrder::parse(
                    &format!("c{customer}"),
                    rid,
                    &lines,
                    total,
                    &format!("k{keys}"),
                )
                .unwrap();
                if let Ok(placed) = engine.place_order(&request).await {
                    orders.push(placed.order_id);
                }
            }
            Op::Edit {
                restaurant,
                item,
                patch,
                lane,
            } => {
                let edited = engine
                    .patch_item(
                        RESTAURANTS[restaurant as usize],
                        ITEMS[item as usize],
                        &patch,
                        lane,
                    )
                    .await;
                // Only a stock delta below what is on hand may be refused.
                prop_assert!(edited.is_ok() || patch.stock_delta.is_some(), "{edited:?}");
            }
            Op::Declines { on } => {
                world.sim.set_faults(Faults {
                    decline_rate: if on { 0.5 } else { 0.0 },
                    ..Faults::default()
                });
            }
            Op::Decide { order, approve } => {
                if let Some(o) = current(order).await {
                    let decision = match approve {
                        true => Decision::Approve,
                        false => Decision::Reject,
                    };
                    engine
                        .decide(&o, decision, "", Some(o.version), false, Lane::Online)
                        .await
                        .unwrap();
                }
            }
            Op::Cancel { order, admin } => {
                if let Some(o) = current(order).await {
                    let actor = if admin { Actor::Admin } else { Actor::Customer };
                    engine.cancel(&o, actor, None, Lane::Online).await.unwrap();
                }
            }
            Op::Release { order } => {
                if let Some(o) = current(order).await {
                    engine
                        .release(
                            &o,
                            engine::domain::RejectReason::ApprovalTimeout,
                            Some(o.version),
                            Lane::Batch,
                        )
                        .await
                        .unwrap();
                }
            }
            Op::Advance { order, confirm } => {
                if let Some(o) = current(order).await {
                    let target = if confirm {
                        OrderStatus::Confirmed
                    } else {
                        OrderStatus::Dispatched
                    };
                    engine
                        .advance(&o, target, Actor::Admin, None, Lane::Online)
                        .await
                        .unwrap();
                }
            }
            Op::Step { role } => {
                workers[role as usize % workers.len()]
                    .read_round()
                    .await
                    .unwrap();
            }
            Op::Redeliver { order } => {
                if let Some(id) = pick(order) {
                    engine::saga::drive_payment(&engine, &world.psp, &id, Lane::Online)
                        .await
                        .unwrap();
                    engine::saga::auto_approve(&engine, &id, Lane::Online)
                        .await
                        .unwrap();
                }
            }
        }
        let report = engine::check::check(&engine, false).await.unwrap();
        prop_assert!(report.passed(), "after a step: {report}");
    }
    // Drive everything to rest: workers drain the streams; the manual
    // restaurant answers whatever still waits for it.
    for _ in 0..50 {
        let mut handled = 0;
        for worker in &workers {
            handled += worker.read_round().await.unwrap().handled;
        }
        let mut waiting = 0;
        for id in &orders {
            let o = engine.order(id).await.unwrap().unwrap();
            if o.status == OrderStatus::Paid && o.decision.is_empty() {
                waiting += 1;
                engine
                    .decide(
                        &o,
                        if o.total % 2 == 0 {
                            Decision::Approve
                        } else {
                            Decision::Reject
                        },
                        "",
                        None,
                        false,
                        Lane::Online,
                    )
                    .await
                    .unwrap();
            }
        }
        if handled + waiting == 0 {
            break;
        }
    }
    let report = engine::check::check(&engine, true).await.unwrap();
    prop_assert!(report.passed(), "at rest: {report}");
    prop_assert_eq!(report.in_flight, 0);
    Ok(())
}

#[test]
fn random_interleavings_keep_the_rule() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(RedisOptions {
        dir: dir.path().join("redis"),
        preferred_port: None,
        appendfsync: AppendFsync::No,
        maxmemory: None,
    })
    .unwrap();
    let sim = PspSim::open(&dir.path().join("ledger.jsonl"), Faults::default()).unwrap();
    let psp_url = runtime.block_on(sim.clone().spawn_local()).unwrap();
    let world = World {
        redis_url: redis.url(),
        _redis: redis,
        _dir: dir,
        sim,
        psp: PspClient::new(&psp_url),
        runtime,
    };
    let config = ProptestConfig {
        cases: 48,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 5..60))| {
        world.runtime.block_on(run_case(&world, ops))?;
    });
}
