//! The Lua script registry: every script in `lua/` embedded at build time,
//! prefixed with `lua/includes/common.lua`, loaded with SCRIPT LOAD and
//! called with EVALSHA, reloaded on NOSCRIPT (a restarted or failed-over
//! Redis forgets its script cache).
//!
//! Each script's header declares its key count (`@keys 5 + 2 per line`);
//! [`Script::call`] asserts every call site passes exactly that many keys.

use fred::prelude::*;

const COMMON: &str = include_str!("../../lua/includes/common.lua");

/// One script: name, full source, SHA-1, declared key count.
#[derive(Debug, Clone)]
pub struct Script {
    pub name: &'static str,
    source: String,
    sha: String,
    /// Keys every call passes.
    pub keys_fixed: usize,
    /// Keys added per order line (item hash and per-customer hash).
    pub keys_per_line: usize,
}

impl Script {
    fn new(name: &'static str, body: &'static str) -> Self {
        let (keys_fixed, keys_per_line) = parse_keys_header(body)
            .unwrap_or_else(|| panic!("lua/{name}.lua declares no `@keys` line"));
        let source = format!("{COMMON}\n{body}");
        #[cfg(feature = "sabotage-skip-release-on-decline")]
        let source = sabotage(name, source);
        let sha = fred::util::sha1_hash(&source);
        Self {
            name,
            source,
            sha,
            keys_fixed,
            keys_per_line,
        }
    }

    /// The SHA-1 EVALSHA names the script by.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// Runs the script; `keys` must match the declared count.
    pub async fn call(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<String>, fred::error::Error> {
        self.assert_key_count(keys.len());
        match client
            .evalsha::<Vec<String>, _, _, _>(&self.sha, keys.clone(), args.clone())
            .await
        {
            Err(error) if error.details().contains("NOSCRIPT") => {
                self.load(client).await?;
                client.evalsha(&self.sha, keys, args).await
            }
            other => other,
        }
    }

    /// SCRIPT LOAD on every primary (a cluster) or the one server.
    pub async fn load(&self, client: &Client) -> Result<(), fred::error::Error> {
        let sha: String = if client.is_clustered() {
            client.script_load_cluster(self.source.as_str()).await?
        } else {
            client.script_load(self.source.as_str()).await?
        };
        assert_eq!(sha, self.sha, "Redis and we agree on the script's SHA-1");
        Ok(())
    }

    fn assert_key_count(&self, count: usize) {
        let lines = count
            .saturating_sub(self.keys_fixed)
            .checked_div(self.keys_per_line)
            .unwrap_or(0);
        assert_eq!(
            count,
            self.keys_fixed + self.keys_per_line * lines,
            "{} takes {} keys + {} per line",
            self.name,
            self.keys_fixed,
            self.keys_per_line
        );
    }
}

/// Parses `@keys N` or `@keys N + M per line` from a script header.
pub fn parse_keys_header(body: &str) -> Option<(usize, usize)> {
    let line = body.lines().find_map(|l| l.trim().strip_prefix("@keys"))?;
    let mut words = line.split_whitespace();
    let fixed = words.next()?.parse().ok()?;
    match (words.next(), words.next(), words.next(), words.next()) {
        (None, ..) => Some((fixed, 0)),
        (Some("+"), Some(per), Some("per"), Some("line")) => Some((fixed, per.parse().ok()?)),
        _ => None,
    }
}

/// Every script lunchrush runs.
#[derive(Debug, Clone)]
pub struct Scripts {
    pub place_order: Script,
    pub record_payment: Script,
    pub restaurant_decision: Script,
    pub release: Script,
    pub cancel: Script,
    pub advance: Script,
    pub restaurant_upsert: Script,
    pub menu_upsert: Script,
    pub claim_timers: Script,
    pub schedule_timer: Script,
    pub record_notification: Script,
    pub reclaim_stock: Script,
    pub retire: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            place_order: Script::new("place_order", include_str!("../../lua/place_order.lua")),
            record_payment: Script::new(
                "record_payment",
                include_str!("../../lua/record_payment.lua"),
            ),
            restaurant_decision: Script::new(
                "restaurant_decision",
                include_str!("../../lua/restaurant_decision.lua"),
            ),
            release: Script::new("release", include_str!("../../lua/release.lua")),
            cancel: Script::new("cancel", include_str!("../../lua/cancel.lua")),
            advance: Script::new("advance", include_str!("../../lua/advance.lua")),
            restaurant_upsert: Script::new(
                "restaurant_upsert",
                include_str!("../../lua/restaurant_upsert.lua"),
            ),
            menu_upsert: Script::new("menu_upsert", include_str!("../../lua/menu_upsert.lua")),
            claim_timers: Script::new("claim_timers", include_str!("../../lua/claim_timers.lua")),
            schedule_timer: Script::new(
                "schedule_timer",
                include_str!("../../lua/schedule_timer.lua"),
            ),
            record_notification: Script::new(
                "record_notification",
                include_str!("../../lua/record_notification.lua"),
            ),
            reclaim_stock: Script::new(
                "reclaim_stock",
                include_str!("../../lua/reclaim_stock.lua"),
            ),
            retire: Script::new("retire", include_str!("../../lua/retire.lua")),
        }
    }

    pub fn all(&self) -> [&Script; 13] {
        [
            &self.place_order,
            &self.record_payment,
            &self.restaurant_decision,
            &self.release,
            &self.cancel,
            &self.advance,
            &self.restaurant_upsert,
            &self.menu_upsert,
            &self.claim_timers,
            &self.schedule_timer,
            &self.record_notification,
            &self.reclaim_stock,
            &self.retire,
        ]
    }

    /// Loads every script (at start; NOSCRIPT later reloads one).
    pub async fn load_all(&self, client: &Client) -> Result<(), fred::error::Error> {
        for script in self.all() {
            script.load(client).await?;
        }
        Ok(())
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// A deliberately broken build, to prove the checker can fail: a declined
/// payment rejects the order but no longer puts its stock back. Compiled only
/// with the `sabotage-skip-release-on-decline` feature (`bench/chaos --sabotage`).
#[cfg(feature = "sabotage-skip-release-on-decline")]
fn sabotage(name: &str, source: String) -> String {
    const RELEASE: &str = "rcall('HINCRBY', item_key, 'stock', line[2])";
    assert!(source.contains(RELEASE), "the sabotaged line moved");
    if name == "record_payment" {
        source.replace(RELEASE, "")
    } else {
        source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script file in lua/ is registered, and every header is
    /// complete: description, Input, Output, @keys, and the KEYS it lists
    /// match the count it declares.
    #[test]
    fn every_script_is_registered_with_a_complete_header() {
        let scripts = Scripts::new();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lua");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".lua")
                    .map(str::to_string)
            })
            .collect();
        files.sort();
        let mut names: Vec<&str> = scripts.all().iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(files, names);
        for script in scripts.all() {
            let body = std::fs::read_to_string(format!("{dir}/{}.lua", script.name)).unwrap();
            let header = &body[..body.find("]]").expect("a --[[ ]] header")];
            for part in ["Input:", "Output:", "Bounded:", "@keys"] {
                assert!(header.contains(part), "{} header lacks {part}", script.name);
            }
            let listed_fixed = (1..=20)
                .filter(|i| header.contains(&format!("KEYS[{i}]")))
                .count();
            assert_eq!(
                listed_fixed, script.keys_fixed,
                "{}: KEYS listed vs @keys",
                script.name
            );
        }
    }

    #[test]
    fn keys_headers_parse() {
        assert_eq!(parse_keys_header("-- x\n  @keys 4\n"), Some((4, 0)));
        assert_eq!(parse_keys_header("  @keys 5 + 2 per line"), Some((5, 2)));
        assert_eq!(parse_keys_header("@keys five"), None);
    }
}
