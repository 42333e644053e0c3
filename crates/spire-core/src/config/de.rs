//! Serde helpers for the shapes upstream's HCL v1 decoder accepts and JSON configs (as the
//! Helm charts render them) use: blocks written as objects or one-element lists, numbers
//! written as strings, durations in Go syntax, and named blocks (`federates_with "td" {}`)
//! that JSON writes as a map or a list of maps.
//!
//! Every helper deserializes through the caller's deserializer, so the error path that
//! [`super::from_value`] reports stays exact.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One block: an object, a list holding one object, or null (absent).
struct OptBlock<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OptBlock<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a block (an object, or a list holding one object)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let first = seq.next_element::<OneBlock<T>>()?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(
                "block is given more than once; it may appear once",
            ));
        }
        Ok(first.and_then(|b| b.0))
    }
}

/// Element of a block list: an object or null.
struct OneBlock<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneBlock<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OptBlock::<T>(PhantomData)).map(OneBlock)
    }
}

/// An optional block (`ca_subject { }`, `"ca_subject": [{...}]`, or absent/null).
pub fn opt_block<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_any(OptBlock::<T>(PhantomData))
}

/// A block that falls back to its default when absent.
pub fn block<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    opt_block(d).map(Option::unwrap_or_default)
}

/// A list of blocks: `[{..}, {..}]`, a single block, or repeated HCL blocks.
pub fn block_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of blocks or a single block")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|b| vec![b])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<T>()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListVisitor::<T>(PhantomData))
}

/// Named blocks (`federates_with "a.test" {..} federates_with "b.test" {..}`): a map from
/// name to block, where JSON may also write a list of such maps or a block as a one-element
/// list. A name given twice is an error.
pub fn named_blocks<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_any(NamedVisitor::<T>(PhantomData, BTreeMap::new()))
}

struct NamedVisitor<T>(PhantomData<T>, BTreeMap<String, T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for NamedVisitor<T> {
    type Value = BTreeMap<String, T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("named blocks (an object keyed by name)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.1)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.1)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        while let Some(name) = map.next_key::<String>()? {
            let block = map.next_value::<OneBlock<T>>()?;
            if self.1.contains_key(&name) {
                return Err(de::Error::custom(format!(
                    "{name:?} is given more than once; it may appear once"
                )));
            }
            if let Some(block) = block.0 {
                self.1.insert(name, block);
            }
        }
        Ok(self.1)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        while let Some(more) = seq.next_element_seed(NamedSeed::<T>(PhantomData))? {
            for (name, block) in more {
                if self.1.contains_key(&name) {
                    return Err(de::Error::custom(format!(
                        "{name:?} is given more than once; it may appear once"
                    )));
                }
                self.1.insert(name, block);
            }
        }
        Ok(self.1)
    }
}

struct NamedSeed<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for NamedSeed<T> {
    type Value = BTreeMap<String, T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        named_blocks(d)
    }
}

/// A number that may be written as a string (`bind_port = "8081"`), as HCL v1 accepts.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer (or an integer in a string)")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is too large")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                #[allow(clippy::cast_possible_truncation, reason = "checked integral above")]
                Ok(Some(v as i64))
            } else {
                Err(E::custom(format!("{v} is not a whole number")))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let t = v.trim();
            if t.is_empty() {
                return Ok(None);
            }
            t.parse::<i64>()
                .map(Some)
                .map_err(|_| E::custom(format!("{v:?} is not a whole number")))
        }
    }
    d.deserialize_any(V)
}

/// An optional TCP port, written as a number or a string; 0 to 65535.
pub fn opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match lenient_i64(d)? {
        None => Ok(None),
        Some(n) => u16::try_from(n).map(Some).map_err(|_| {
            de::Error::custom(format!(
                "port {n} is out of range; use a number from 1 to 65535"
            ))
        }),
    }
}

/// An optional non-negative count, written as a number or a string.
pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match lenient_i64(d)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            de::Error::custom(format!(
                "{n} is out of range; use a number from 0 to 4294967295"
            ))
        }),
    }
}

/// An optional signed integer, written as a number or a string.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    lenient_i64(d)
}

/// An optional boolean; `"true"` / `"false"` strings are accepted too (they appear after
/// `-expandEnv` substitution).
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(E::custom(format!("{v:?} is not true or false"))),
            }
        }
    }
    d.deserialize_any(V)
}

/// An optional string; numbers and booleans are taken as their text, as HCL v1 does when
/// decoding into a string field. An empty string counts as unset, as upstream treats it.
pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok((!v.is_empty()).then(|| v.to_owned()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

/// A list of strings; a single string is taken as a one-element list, null as empty.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// An optional Go duration (`"1h30m"`); the number 0 is accepted as zero, as Go's
/// `time.ParseDuration("0")` does, and an empty string counts as unset.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match opt_string(d)? {
        None => Ok(None),
        Some(text) => crate::duration::parse(text.trim())
            .map(Some)
            .map_err(de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default, deserialize_with = "opt_port")]
        port: Option<u16>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default, deserialize_with = "opt_block")]
        one: Option<Inner>,
        #[serde(default, deserialize_with = "block_list")]
        many: Vec<Inner>,
        #[serde(default, deserialize_with = "named_blocks")]
        named: BTreeMap<String, Inner>,
        #[serde(default, deserialize_with = "opt_duration")]
        ttl: Option<Duration>,
        #[serde(default, deserialize_with = "opt_bool")]
        on: Option<bool>,
    }

    fn load(v: serde_json::Value) -> Result<Outer, String> {
        crate::config::from_value("t.conf", v).map_err(|e| e.to_string())
    }

    #[test]
    fn blocks_accept_objects_lists_and_null() {
        let a = load(json!({"one": {"port": "8081"}})).unwrap();
        let b = load(json!({"one": [{"port": 8081}]})).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.one, Some(Inner { port: Some(8081) }));
        assert_eq!(load(json!({"one": null})).unwrap().one, None);
        let err = load(json!({"one": [{"port": 1}, {"port": 2}]})).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn errors_keep_their_path() {
        let err = load(json!({"one": [{"port": "99999"}]})).unwrap_err();
        assert!(err.starts_with("t.conf: one[0].port: port 99999"), "{err}");
        let err = load(json!({"named": {"a.test": {"prot": 1}}})).unwrap_err();
        assert!(err.contains("unknown key \"prot\""), "{err}");
        let err = load(json!({"ttl": "5d"})).unwrap_err();
        assert!(err.starts_with("t.conf: ttl: unknown unit"), "{err}");
    }

    #[test]
    fn named_blocks_merge_json_list_forms() {
        let v =
            load(json!({"named": [{"a.test": [{"port": 1}]}, {"b.test": {"port": 2}}]})).unwrap();
        assert_eq!(v.named.len(), 2);
        assert_eq!(v.named["b.test"].port, Some(2));
        let err = load(json!({"named": [{"a": {}}, {"a": {}}]})).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn scalars_are_lenient_like_hcl_v1() {
        let v = load(json!({"ttl": 0, "on": "true", "many": {"port": 1}})).unwrap();
        assert_eq!(v.ttl, Some(Duration::ZERO));
        assert_eq!(v.on, Some(true));
        assert_eq!(v.many.len(), 1);
        assert!(
            load(json!({"ttl": 5})).is_err(),
            "a bare number has no unit"
        );
    }
}
