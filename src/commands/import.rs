//! `lunchrush import FILE`: bulk restaurant import. Each line of FILE (JSON
//! Lines; `-` reads standard input) is one restaurant with its menu:
//!
//! ```json
//! {"restaurant_id": "r1", "name": "Noodle Bar", "open": true, "auto_approve": true,
//!  "items": [{"item": "ramen", "name": "Ramen", "price": 9000, "stock": 200,
//!             "available": true, "max_per_customer": 2}]}
//! ```
//!
//! The writes go through the same atomic scripts as `PUT /v1/restaurants/..`
//! and `PUT .../menu/{item}`, on the batch lane: their events go to the batch
//! streams, which no online consumer waits behind, and `--max-rate` bounds
//! the restaurants written per second so an import never crowds out the
//! lunch peak. A line that does not parse or is refused is reported with its
//! number and skipped; the exit status is 1 when any line was, 0 otherwise.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use engine::domain;
use engine::engine::ItemPut;
use engine::keys::Lane;
use serde::Deserialize;

use crate::args::EngineArgs;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// JSON Lines file of restaurants with their menus (`-`: standard input).
    pub file: String,
    /// At most this many restaurants per second (0: no limit).
    #[arg(long, default_value_t = 200.0)]
    pub max_rate: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    restaurant_id: String,
    name: String,
    open: bool,
    auto_approve: bool,
    /// Each: `item` (its id) plus the body of `PUT .../menu/{item}`.
    #[serde(default)]
    items: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One restaurant of the file, validated as the API validates it.
struct Restaurant {
    rid: String,
    name: String,
    open: bool,
    auto_approve: bool,
    items: Vec<(String, ItemPut)>,
}

fn parse(text: &str) -> Result<Restaurant, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let rid = domain::parse_id("restaurant_id", &line.restaurant_id).map_err(|e| e.to_string())?;
    let name = domain::parse_name("name", &line.name).map_err(|e| e.to_string())?;
    let mut items = Vec::with_capacity(line.items.len());
    for (i, mut item) in line.items.into_iter().enumerate() {
        let id = match item.remove("item") {
            Some(serde_json::Value::String(id)) => id,
            _ => return Err(format!("items[{i}].item: a string is required")),
        };
        let id = domain::parse_id(&format!("items[{i}].item"), &id).map_err(|e| e.to_string())?;
        let body: api::menus::ItemPutBody =
            serde_json::from_value(item.into()).map_err(|e| format!("items[{i}]: {e}"))?;
        let put = body
            .validate()
            .map_err(|problem| format!("items[{i}].{}", problem.detail))?;
        items.push((id, put));
    }
    Ok(Restaurant {
        rid,
        name,
        open: line.open,
        auto_approve: line.auto_approve,
        items,
    })
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let config = args.engine.config()?;
    let engine =
        engine::Engine::new(engine::store::connect(&config).await?, config.clone()).await?;
    let reader: Box<dyn BufRead> = if args.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .map_err(|e| anyhow::anyhow!("open {}: {e}", args.file))?;
        Box::new(std::io::BufReader::new(file))
    };
    let started = Instant::now();
    let (mut restaurants, mut items, mut refused) = (0u64, 0u64, 0u64);
    for (n, text) in reader.lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let number = n + 1;
        let Restaurant {
            rid,
            name,
            open,
            auto_approve,
            items: menu,
        } = match parse(&text) {
            Ok(parsed) => parsed,
            Err(error) => {
                println!("line {number}: refused: {error}");
                refused += 1;
                continue;
            }
        };
        let mut written = engine
            .put_restaurant(&rid, &name, open, auto_approve, Lane::Batch)
            .await;
        for (item, put) in &menu {
            if written.is_err() {
                break;
            }
            written = engine
                .put_item(&rid, item, put, Lane::Batch)
                .await
                .map(|_| ());
            items += u64::from(written.is_ok());
        }
        match written {
            Ok(()) => restaurants += 1,
            Err(error) => {
                println!("line {number}: restaurant {rid}: refused: {error}");
                refused += 1;
            }
        }
        if args.max_rate > 0.0 {
            let due = Duration::from_secs_f64((restaurants + refused) as f64 / args.max_rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    println!(
        "imported {restaurants} restaurants, {items} items in {:.1}s; {refused} lines refused",
        started.elapsed().as_secs_f64()
    );
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
