//! Stream entries as XREADGROUP replies carry them, parsed straight from
//! the reply: an entry's fields a short list looked up by a scan (an event
//! has seven), not a `HashMap` built through the client's generic
//! conversion. The workers and the archiver read every event this way. In a
//! profile of `saga-bench` the reads and the events' parsing fell from 4.1
//! to 2.0 % of the process's samples. Each field is copied out of the reply
//! once: an entry waits on a provider call, and slices would keep the
//! connection's read buffer alive meanwhile.

use std::collections::HashMap;

use fred::bytes_utils::Str;
use fred::error::{Error, ErrorKind};
use fred::types::Value;

/// One entry's fields, in the order Redis sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// The value of `key` (the first, should an entry repeat a field).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The fields as a map (for a dead letter's record).
    pub fn to_map(&self) -> HashMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl From<HashMap<String, String>> for Fields {
    fn from(map: HashMap<String, String>) -> Self {
        Self(map.into_iter().collect())
    }
}

/// One XREADGROUP page: each stream with its entries (id, fields), in the
/// order Redis sent them. A pending entry trimmed since its delivery comes
/// back with no fields.
pub type Page = Vec<(String, Vec<(String, Fields)>)>;

/// The page of an XREADGROUP reply: nil (nothing new), an array of
/// `[stream, entries]` pairs (RESP2) or a map of stream to entries (RESP3).
pub fn page_of(reply: Value) -> Result<Page, Error> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Null => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|pair| match pair {
                Value::Array(pair) => two(pair),
                other => Err(shape("a [stream, entries] pair", &other)),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(key, entries)| (Value::from(key), entries))
            .collect(),
        other => return Err(shape("an array of streams", &other)),
    };
    streams
        .into_iter()
        .map(|(stream, entries)| {
            let stream = text(stream)?.to_string();
            let entries = match entries {
                Value::Array(entries) => entries.into_iter().map(entry).collect(),
                Value::Null => Ok(Vec::new()),
                other => Err(shape("an array of entries", &other)),
            }?;
            Ok((stream, entries))
        })
        .collect()
}

/// `[id, [field, value, …]]`; the fields nil for an entry trimmed since.
fn entry(value: Value) -> Result<(String, Fields), Error> {
    let Value::Array(pair) = value else {
        return Err(shape("an [id, fields] entry", &value));
    };
    let (id, fields) = two(pair)?;
    let flat = match fields {
        Value::Array(flat) if flat.len() % 2 == 0 => flat,
        Value::Null => Vec::new(),
        other => return Err(shape("an even array of fields", &other)),
    };
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        pairs.push((text(k)?.to_string(), text(v)?.to_string()));
    }
    Ok((text(id)?.to_string(), Fields(pairs)))
}

fn two(pair: Vec<Value>) -> Result<(Value, Value), Error> {
    let mut pair = pair.into_iter();
    match (pair.next(), pair.next(), pair.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(Error::new(ErrorKind::Parse, "expected a pair")),
    }
}

fn text(value: Value) -> Result<Str, Error> {
    match value {
        Value::String(s) => Ok(s),
        Value::Bytes(b) => Str::from_inner(b)
            .map_err(|_| Error::new(ErrorKind::Parse, "a stream entry holds bytes, not UTF-8")),
        other => Err(shape("a string", &other)),
    }
}

fn shape(expected: &str, got: &Value) -> Error {
    Error::new(
        ErrorKind::Parse,
        format!("XREADGROUP reply: expected {expected}, got {}", got.kind()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    fn fields(flat: &[&str]) -> Value {
        Value::Array(flat.iter().map(|t| s(t)).collect())
    }

    /// A RESP2 reply of two streams, one entry of which was trimmed since
    /// its delivery (nil fields), parses in order with its fields.
    #[test]
    fn a_page_keeps_the_streams_entries_and_fields_in_order() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                s("{p0}:orders"),
                Value::Array(vec![
                    Value::Array(vec![s("1-0"), fields(&["type", "OrderPlaced", "seq", "1"])]),
                    Value::Array(vec![s("2-0"), Value::Null]),
                ]),
            ]),
            Value::Array(vec![
                s("{p1}:payments"),
                Value::Array(vec![Value::Array(vec![
                    s("3-0"),
                    Value::Array(vec![s("type"), Value::Bytes("PaymentCaptured".into())]),
                ])]),
            ]),
        ]);
        let page = page_of(reply).unwrap();
        assert_eq!(page.len(), 2);
        let (stream, entries) = &page[0];
        assert_eq!(stream, "{p0}:orders");
        assert_eq!(entries[0].0, "1-0");
        assert_eq!(entries[0].1.get("type"), Some("OrderPlaced"));
        assert_eq!(entries[0].1.get("seq"), Some("1"));
        assert_eq!(entries[0].1.get("data"), None);
        assert!(entries[1].1.is_empty(), "a trimmed entry has no fields");
        assert_eq!(page[1].1[0].1.get("type"), Some("PaymentCaptured"));
        assert_eq!(
            page[1].1[0].1.to_map(),
            HashMap::from([("type".to_string(), "PaymentCaptured".to_string())])
        );
    }

    #[test]
    fn nothing_new_is_an_empty_page_and_a_bad_shape_an_error() {
        assert_eq!(page_of(Value::Null).unwrap(), Page::new());
        assert!(page_of(s("OK")).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            s("{p0}:orders"),
            Value::Array(vec![Value::Array(vec![s("1-0"), fields(&["type"])])]),
        ])]);
        assert!(page_of(odd).is_err(), "fields come in pairs");
    }
}
