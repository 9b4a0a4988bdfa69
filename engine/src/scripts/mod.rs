//! The Lua scripts, each declared once and bound to Rust by type.
//!
//! Every script in `lua/` declares its keys, arguments and reply in its
//! header; `engine/build.rs` turns that declaration into the Lua prologue
//! that binds the names to positions and into a module here per script
//! (`scripts::record_payment::{Keys, Args}`, reply type) — so the compiler,
//! not a convention, keeps a call site equal to its script. Scripts run with
//! EVALSHA, prefixed with `lua/includes/common.lua`, and are reloaded on
//! NOSCRIPT (a restarted or failed-over Redis forgets its script cache).

use std::marker::PhantomData;

use fred::prelude::*;

use crate::engine::EngineError;

pub mod args;
pub mod replies;

pub use replies::{FromReply, Outcome, Transition};

include!(concat!(env!("OUT_DIR"), "/scripts.rs"));

const COMMON: &str = include_str!("../../../lua/includes/common.lua");

/// One script's typed signature (generated from its header).
pub trait Binding {
    const NAME: &'static str;
    /// Its first line: `#!lua flags=allow-oom` where it finishes work
    /// already accepted (Redis runs it past `maxmemory`), `#!lua` where it
    /// takes new work (refused before it starts once Redis is past it).
    const SHEBANG: &'static str;
    /// The prologue binding its names, then the file.
    const BODY: &'static str;
    type Keys;
    type Args;
    type Reply: FromReply;
    fn keys(keys: Self::Keys) -> Vec<String>;
    fn args(args: Self::Args) -> Vec<String>;
}

/// One script as Redis knows it: name, full source, SHA-1.
#[derive(Debug, Clone)]
pub struct Script {
    pub name: &'static str,
    source: String,
    sha: String,
}

impl Script {
    fn new(name: &'static str, shebang: &'static str, body: &'static str) -> Self {
        let source = format!("{shebang}\n{COMMON}\n{body}");
        #[cfg(feature = "sabotage-skip-release-on-decline")]
        let source = sabotage(name, source);
        let sha = fred::util::sha1_hash(&source);
        Self { name, source, sha }
    }

    /// The SHA-1 EVALSHA names the script by.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// The source Redis runs.
    pub fn source(&self) -> &str {
        &self.source
    }

    async fn call(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<String>, fred::error::Error> {
        let (first_keys, first_args) = (shared(&keys), shared(&args));
        match client
            .evalsha::<Vec<String>, _, _, _>(&self.sha, first_keys, first_args)
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
}

/// `parts` copied into one buffer and sent as its slices: one allocation
/// for a call's names or arguments instead of one each (the strings stay
/// for a NOSCRIPT retry).
fn shared(parts: &[String]) -> Vec<bytes::Bytes> {
    let mut buffer = bytes::BytesMut::with_capacity(parts.iter().map(String::len).sum());
    parts
        .iter()
        .map(|part| {
            buffer.extend_from_slice(part.as_bytes());
            buffer.split().freeze()
        })
        .collect()
}

/// A script with its binding: takes typed keys and arguments, answers its
/// typed reply.
#[derive(Debug, Clone)]
pub struct Bound<B> {
    pub script: Script,
    binding: PhantomData<B>,
}

impl<B: Binding> Bound<B> {
    fn new() -> Self {
        Self {
            script: Script::new(B::NAME, B::SHEBANG, B::BODY),
            binding: PhantomData,
        }
    }

    /// Runs the script.
    pub async fn run(
        &self,
        client: &Client,
        keys: B::Keys,
        args: B::Args,
    ) -> Result<B::Reply, EngineError> {
        let reply = self
            .script
            .call(client, B::keys(keys), B::args(args))
            .await?;
        B::Reply::from_reply(B::NAME, reply)
    }

    /// The SHA-1 EVALSHA names the script by.
    pub fn sha(&self) -> &str {
        self.script.sha()
    }
}

impl Scripts {
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

    /// Every script file in lua/ is registered, every header is complete,
    /// and every prologue binds what the header declares.
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
            for part in ["Keys:", "Args:", "Reply:", "Output:", "Bounded:"] {
                assert!(header.contains(part), "{} header lacks {part}", script.name);
            }
            assert!(
                script.source().contains("-- Generated from the header"),
                "{} has its prologue",
                script.name
            );
        }
    }

    /// The generated prologue binds names to the positions the Rust side
    /// fills, in the same order.
    #[test]
    fn keys_and_args_follow_the_header_order() {
        let source = Scripts::new().record_payment.script.source;
        assert!(source.contains(
            "local order_key, pay_stream, order_stream, rest_stream, inflight, timers, \
             restaurant_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]"
        ));
        assert!(source.contains("local LINE_KEYS = 8"));
        let keys = record_payment::Keys {
            order_key: "o".into(),
            pay_stream: "p".into(),
            order_stream: "s".into(),
            rest_stream: "r".into(),
            inflight: "i".into(),
            timers: "t".into(),
            restaurant_key: "k".into(),
            lines: vec![["a".into(), "b".into()]],
        }
        .into_vec();
        assert_eq!(keys, ["o", "p", "s", "r", "i", "t", "k", "a", "b"]);
        let args = place_order::Args {
            order_id: "id".into(),
            saga: "s".into(),
            customer: "c".into(),
            rid: "r".into(),
            fingerprint: "f".into(),
            expected_total: 100,
            idem_ttl: std::time::Duration::from_secs(1),
            payment_window: std::time::Duration::from_millis(5),
            guarded: true,
            lines: vec![("burger".into(), 2)],
        }
        .into_vec();
        assert_eq!(
            args,
            [
                "id", "s", "c", "r", "f", "100", "1000", "5", "1", "burger", "2"
            ]
        );
    }
}
