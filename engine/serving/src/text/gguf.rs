//! GGUF metadata (llama.cpp's file format), read without the tensors: the key/value
//! section that holds a model's shape, tokenizer and chat template. Only that section
//! is read; a frontend never touches the weights, and the engine reads the tensors
//! with its own loader.
//!
//! Layout (versions 2 and 3, little-endian): `GGUF`, version `u32`, tensor count `u64`,
//! key/value count `u64`, then each entry as a string key, a `u32` type and the value.
//! A string is a `u64` length and UTF-8 bytes; an array is an element type, a `u64`
//! count and the elements. Every length is checked against the bytes left in the
//! file, so a malformed file is an error, never a huge allocation or a panic.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use crate::{Result, ServingError};

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `u8`, `u16`, `u32` or `u64`.
    Unsigned(u64),
    /// `i8`, `i16`, `i32` or `i64`.
    Signed(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as a non-negative integer that fits `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }
    /// The value as a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::Unsigned(v) => Some(v),
            GgufValue::Signed(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::Float(v) => Some(v),
            GgufValue::Unsigned(v) => Some(v as f64),
            GgufValue::Signed(v) => Some(v as f64),
            _ => None,
        }
    }
    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A GGUF file's metadata.
#[derive(Clone, Debug, Default)]
pub struct GgufMetadata {
    /// The format version (2 or 3).
    pub version: u32,
    /// Tensors the file says it holds (not read).
    pub tensor_count: u64,
    /// Every key/value entry.
    pub entries: HashMap<String, GgufValue>,
}

/// The most nested arrays accepted (GGUF itself uses one level).
const MAX_DEPTH: usize = 4;

struct Reader<'a, R> {
    inner: &'a mut R,
    /// Bytes left in the file after the current position.
    left: u64,
    name: &'a str,
}

impl<R: Read> Reader<'_, R> {
    fn bad(&self, what: impl std::fmt::Display) -> ServingError {
        ServingError::model(format!("{} is not a GGUF file: {what}", self.name))
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        if self.left < N as u64 {
            return Err(self.bad("it ends inside its metadata"));
        }
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|e| self.bad(format_args!("reading its metadata: {e}")))?;
        self.left -= N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        if len > self.left {
            return Err(self.bad(format_args!(
                "a string of {len} bytes where {} are left",
                self.left
            )));
        }
        let mut buf = Vec::new();
        (&mut *self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| self.bad(format_args!("reading its metadata: {e}")))?;
        if buf.len() as u64 != len {
            return Err(self.bad("it ends inside a string"));
        }
        self.left -= len;
        String::from_utf8(buf).map_err(|_| self.bad("a string is not UTF-8"))
    }

    /// The smallest encoding of a value of type `ty`, to bound array counts.
    fn min_size(&self, ty: u32) -> Result<u64> {
        Ok(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            other => return Err(self.bad(format_args!("unknown value type {other}"))),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::Unsigned(u64::from(self.bytes::<1>()?[0])),
            1 => GgufValue::Signed(i64::from(i8::from_le_bytes(self.bytes::<1>()?))),
            2 => GgufValue::Unsigned(u64::from(u16::from_le_bytes(self.bytes::<2>()?))),
            3 => GgufValue::Signed(i64::from(i16::from_le_bytes(self.bytes::<2>()?))),
            4 => GgufValue::Unsigned(u64::from(self.u32()?)),
            5 => GgufValue::Signed(i64::from(i32::from_le_bytes(self.bytes::<4>()?))),
            6 => GgufValue::Float(f64::from(f32::from_le_bytes(self.bytes::<4>()?))),
            7 => match self.bytes::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.bad(format_args!("a boolean of value {b}"))),
            },
            8 => GgufValue::Str(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad("arrays nested too deep"));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                let min = self.min_size(elem)?;
                if count.saturating_mul(min) > self.left {
                    return Err(self.bad(format_args!(
                        "an array of {count} values where {} bytes are left",
                        self.left
                    )));
                }
                // `count` is bounded by the bytes left, so this reserves at most the
                // file's size in values.
                let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Unsigned(self.u64()?),
            11 => GgufValue::Signed(i64::from_le_bytes(self.bytes::<8>()?)),
            12 => GgufValue::Float(f64::from_le_bytes(self.bytes::<8>()?)),
            other => return Err(self.bad(format_args!("unknown value type {other}"))),
        })
    }
}

impl GgufMetadata {
    /// Reads the metadata of the GGUF file `name` from `reader` (positioned at its
    /// start); the tensors that follow are not read.
    pub fn read<R: Read + Seek>(reader: &mut R, name: &str) -> Result<GgufMetadata> {
        let start = reader.stream_position()?;
        let end = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(start))?;
        let mut r = Reader {
            inner: reader,
            left: end.saturating_sub(start),
            name,
        };
        if &r.bytes::<4>().map_err(|_| r.bad("too short"))? != b"GGUF" {
            return Err(r.bad("no GGUF magic"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format_args!(
                "version {version} (versions 2 and 3 are read)"
            )));
        }
        let tensor_count = r.u64()?;
        let count = r.u64()?;
        // An entry takes at least a key length, a type and one byte of value.
        if count.saturating_mul(13) > r.left {
            return Err(r.bad(format_args!(
                "{count} metadata entries where {} bytes are left",
                r.left
            )));
        }
        let mut entries = HashMap::new();
        for _ in 0..count {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            if entries.insert(key.clone(), value).is_some() {
                return Err(r.bad(format_args!("the key `{key}` twice")));
            }
        }
        if entries
            .get("general.alignment")
            .is_some_and(|a| a.as_u64().is_none_or(|a| a == 0 || !a.is_power_of_two()))
        {
            return Err(r.bad("`general.alignment` is not a power of two"));
        }
        Ok(GgufMetadata {
            version,
            tensor_count,
            entries,
        })
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&GgufValue> {
        self.entries
            .get(key)
            .ok_or_else(|| ServingError::model(format!("GGUF metadata has no `{key}`")))
    }

    /// `key` as an integer, or an error naming it.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key)?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| ServingError::model(format!("GGUF `{key}` is not an integer")))
    }

    /// `key` as a `u32`, if present and one.
    pub fn u32(&self, key: &str) -> Option<u32> {
        self.entries.get(key).and_then(GgufValue::as_u32)
    }

    /// `key` as a float, if present and one.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.entries.get(key).and_then(GgufValue::as_f64)
    }

    /// `key` as a boolean, if present and one.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.entries.get(key).and_then(GgufValue::as_bool)
    }

    /// `key` as a string, if present and one.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(GgufValue::as_str)
    }

    /// `key` as an array of strings, or an error naming it.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let bad = || ServingError::model(format!("GGUF `{key}` is not an array of strings"));
        self.get(key)?
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|v| v.as_str().ok_or_else(bad))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A GGUF header with `entries` (key, type, encoded value).
    pub(crate) fn file(entries: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut f = b"GGUF\x03\0\0\0".to_vec();
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (k, ty, v) in entries {
            f.extend_from_slice(&(k.len() as u64).to_le_bytes());
            f.extend_from_slice(k.as_bytes());
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(v);
        }
        f
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn read(bytes: &[u8]) -> Result<GgufMetadata> {
        GgufMetadata::read(&mut std::io::Cursor::new(bytes), "t.gguf")
    }

    #[test]
    fn values_of_every_type_are_read() {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&2u64.to_le_bytes());
        arr.extend(string("a"));
        arr.extend(string("bc"));
        let m = read(&file(&[
            ("u8", 0, vec![7]),
            ("i8", 1, vec![0xff]),
            ("u32", 4, 42u32.to_le_bytes().to_vec()),
            ("f32", 6, 1.5f32.to_le_bytes().to_vec()),
            ("b", 7, vec![1]),
            ("s", 8, string("héllo")),
            ("arr", 9, arr),
            ("u64", 10, (1u64 << 40).to_le_bytes().to_vec()),
            ("f64", 12, 0.25f64.to_le_bytes().to_vec()),
        ]))
        .unwrap();
        assert_eq!(m.u32("u8"), Some(7));
        assert_eq!(m.entries["i8"], GgufValue::Signed(-1));
        assert_eq!(m.u32("i8"), None, "a negative value is no u32");
        assert_eq!(m.usize("u32").unwrap(), 42);
        assert_eq!(m.f64("f32"), Some(1.5));
        assert_eq!(m.bool("b"), Some(true));
        assert_eq!(m.str("s"), Some("héllo"));
        assert_eq!(m.strings("arr").unwrap(), ["a", "bc"]);
        assert_eq!(m.u32("u64"), None, "too large for u32");
        assert_eq!(m.usize("u64").unwrap(), 1 << 40);
        assert_eq!(m.f64("f64"), Some(0.25));
        assert!(
            m.usize("missing")
                .unwrap_err()
                .to_string()
                .contains("`missing`")
        );
    }

    #[test]
    fn malformed_files_are_errors_without_huge_allocations() {
        let bad = |bytes: &[u8], what: &str| {
            let err = read(bytes).unwrap_err().to_string();
            assert!(
                err.contains("t.gguf is not a GGUF file") && err.contains(what),
                "{what}: {err}"
            );
        };
        bad(b"GG", "too short");
        bad(b"GGML\x03\0\0\0", "magic");
        bad(b"GGUF\x01\0\0\0", "version 1");
        // A string claiming 2^60 bytes, an array claiming 2^60 values, 2^60 entries.
        let mut huge = (1u64 << 60).to_le_bytes().to_vec();
        huge.extend_from_slice(b"x");
        bad(&file(&[("s", 8, huge)]), "a string of");
        let mut arr = 4u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bad(&file(&[("a", 9, arr)]), "an array of");
        let mut many = b"GGUF\x03\0\0\0".to_vec();
        many.extend_from_slice(&0u64.to_le_bytes());
        many.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bad(&many, "metadata entries");
        bad(&file(&[("t", 13, vec![0; 8])]), "unknown value type 13");
        bad(&file(&[("b", 7, vec![2])]), "a boolean of value 2");
        bad(
            &file(&[("s", 8, vec![1, 0, 0, 0, 0, 0, 0, 0, 0xff])]),
            "not UTF-8",
        );
        bad(&file(&[("k", 0, vec![1]), ("k", 0, vec![2])]), "twice");
        // Found by libFuzzer against candle's reader: an alignment of 0 divided by zero.
        bad(
            &file(&[("general.alignment", 4, 0u32.to_le_bytes().to_vec())]),
            "power of two",
        );
        // Cut anywhere: an error, never a panic.
        let whole = file(&[("s", 8, string("abc")), ("n", 4, vec![1, 0, 0, 0])]);
        for cut in 0..whole.len() {
            assert!(read(&whole[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read(&whole).is_ok());
    }
}
