//! Sizes as users type them and as tables show them.
//!
//! Units are binary only (K = 1024): device sizes, chunk sizes and
//! device-mapper sectors are all powers of two, and a decimal "K" would make
//! `512K` a chunk size the kernel refuses.

use std::str::FromStr;

use crate::error::{Error, Result};

/// Device-mapper counts in 512-byte sectors, whatever the device's block size.
pub const SECTOR_BYTES: u64 = 512;

const EXAMPLES: &str = "e.g. 4096, 512K, 1.5G, 2TiB";

/// Bytes from `4096`, `512K`, `512M`, `1.5G`, `2TiB`, `64k`, ...
///
/// Suffixes are case-insensitive: none or `B` for bytes, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, `T`/`TiB`. A fraction is allowed when it comes to whole bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let invalid = |problem: &str| Error::usage(format!("invalid size `{text}`: {problem}; {EXAMPLES}"));
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    if trimmed.starts_with('-') {
        return Err(invalid("a size cannot be negative"));
    }
    let split = trimmed.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(invalid("it is not a number"));
    }
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(invalid("unknown unit; use B, K, M, G or T (KiB, MiB, ... also work)")),
    };
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid("it is too large"))? };
    let fraction = fraction_bytes(fraction, unit).ok_or_else(|| invalid("it is not a whole number of bytes"))?;
    whole.checked_mul(unit).and_then(|bytes| bytes.checked_add(fraction)).ok_or_else(|| invalid("it is too large"))
}

/// `0.<digits>` of `unit`, in bytes, or `None` if that is not whole bytes.
///
/// Exact decimal multiplication from the last digit up: every digit that the
/// product leaves below the decimal point must be zero. With `unit` at most
/// 2^40 nothing overflows, however many digits there are.
fn fraction_bytes(digits: &str, unit: u64) -> Option<u64> {
    let mut carry = 0;
    for digit in digits.bytes().rev() {
        let product = u64::from(digit - b'0') * unit + carry;
        if !product.is_multiple_of(10) {
            return None;
        }
        carry = product / 10;
    }
    Some(carry)
}

/// How much copy-on-write space a snapshot may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    Bytes(u64),
    /// Of the origin's size, 1 to 100.
    Percent(u32),
}

impl Quota {
    /// The quota in bytes for an origin of `origin_bytes`. A percentage is
    /// rounded up, so a non-empty origin never gets a zero quota.
    pub fn resolve(&self, origin_bytes: u64) -> u64 {
        match *self {
            Quota::Bytes(bytes) => bytes,
            // At most 100% of a u64, so the result fits in a u64.
            Quota::Percent(percent) => (u128::from(origin_bytes) * u128::from(percent)).div_ceil(100) as u64,
        }
    }
}

impl FromStr for Quota {
    type Err = Error;

    /// `512M`, `2G` (see [`parse_size`]) or `10%` of the origin.
    fn from_str(text: &str) -> Result<Quota> {
        if let Some(number) = text.trim().strip_suffix('%') {
            return match number.trim().parse::<u32>() {
                Ok(percent @ 1..=100) => Ok(Quota::Percent(percent)),
                _ => Err(Error::usage(format!(
                    "invalid quota `{text}`: a percentage must be a whole number from 1 to 100, e.g. 10%"
                ))),
            };
        }
        let bytes = parse_size(text)
            .map_err(|e| Error::usage(format!("{}; or a percentage of the origin, e.g. 10%", e.message())))?;
        match bytes {
            0 => Err(Error::usage(format!("invalid quota `{text}`: it must leave room for changes, e.g. 512M or 10%"))),
            bytes => Ok(Quota::Bytes(bytes)),
        }
    }
}

/// The unit in which a snapshot copies data aside: a power of two from 4 KiB
/// to 1 MiB.
///
/// dm-snapshot takes any power of two in sectors; below 4 KiB every page-sized
/// write copies several chunks, and above 1 MiB one small write copies a lot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSize(u64);

impl ChunkSize {
    const MIN: u64 = 4 << 10;
    const MAX: u64 = 1 << 20;

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The size in 512-byte sectors, as the snapshot table wants it.
    pub fn sectors(self) -> u64 {
        self.0 / SECTOR_BYTES
    }
}

impl Default for ChunkSize {
    fn default() -> ChunkSize {
        ChunkSize(ChunkSize::MIN)
    }
}

impl FromStr for ChunkSize {
    type Err = Error;

    fn from_str(text: &str) -> Result<ChunkSize> {
        let bytes = parse_size(text)?;
        if !bytes.is_power_of_two() || !(ChunkSize::MIN..=ChunkSize::MAX).contains(&bytes) {
            return Err(Error::usage(format!(
                "invalid chunk size `{text}`: it must be a power of two from 4K to 1M, e.g. 4K, 64K, 1M"
            )));
        }
        Ok(ChunkSize(bytes))
    }
}

/// `bytes` for people: `512 B`, `4 KiB`, `1.5 GiB`, with at most one decimal.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Rounding can carry into the next unit (1023.96 KiB is 1 MiB), so the
    // unit is the first one where the rounded value stays below 1024.
    let (tenths, name) = UNITS
        .iter()
        .scan(1u128, |unit, name| {
            *unit *= 1024;
            Some(((u128::from(bytes) * 10 + *unit / 2) / *unit, name))
        })
        .find(|&(tenths, _)| tenths < 10240)
        .expect("u64::MAX is 16 EiB");
    match tenths % 10 {
        0 => format!("{} {name}", tenths / 10),
        decimal => format!("{}.{decimal} {name}", tenths / 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling() {
        for (text, bytes) in [
            ("4096", 4096),
            ("0", 0),
            ("512B", 512),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("512KiB", 512 << 10),
            ("512kib", 512 << 10),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("2G", 2 << 30),
            ("2g", 2 << 30),
            ("2GiB", 2 << 30),
            ("1T", 1 << 40),
            ("1TiB", 1 << 40),
            (" 64 K ", 64 << 10),
            ("1.5G", 3 << 29),
            ("1.50G", 3 << 29),
            (".5K", 512),
            ("2.", 2),
            ("0.0009765625K", 1),
            ("16777215T", 16_777_215 << 40),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
    }

    #[test]
    fn bad_sizes_name_the_text_and_show_examples() {
        for (text, problem) in [
            ("", "empty"),
            ("  ", "empty"),
            ("-1G", "negative"),
            ("1.3K", "whole number of bytes"),
            ("0.5", "whole number of bytes"),
            ("16777216T", "too large"),
            ("99999999999999999999", "too large"),
            ("2X", "unknown unit"),
            ("+5", "not a number"),
            ("2KB", "unknown unit"),
            ("2 G B", "unknown unit"),
            ("G", "not a number"),
            (".", "not a number"),
            ("1.2.3", "not a number"),
        ] {
            let message = parse_size(text).unwrap_err().to_string();
            assert!(message.contains(&format!("`{text}`")), "{message}");
            assert!(message.contains(problem), "{text}: {message}");
            assert!(message.contains("512K"), "{message}");
        }
        assert_eq!(parse_size("x").unwrap_err().kind, crate::error::Kind::Usage);
    }

    #[test]
    fn quotas() {
        assert_eq!("512M".parse::<Quota>().unwrap(), Quota::Bytes(512 << 20));
        assert_eq!("2G".parse::<Quota>().unwrap(), Quota::Bytes(2 << 30));
        assert_eq!("10%".parse::<Quota>().unwrap(), Quota::Percent(10));
        assert_eq!("100%".parse::<Quota>().unwrap(), Quota::Percent(100));
        for bad in ["0%", "101%", "2.5%", "-5%", "%", "0", "ten"] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quotas_resolve_against_the_origin() {
        assert_eq!(Quota::Bytes(4096).resolve(1 << 40), 4096);
        assert_eq!(Quota::Percent(10).resolve(1000), 100);
        assert_eq!(Quota::Percent(1).resolve(1), 1, "rounded up, never zero");
        assert_eq!(Quota::Percent(100).resolve(u64::MAX), u64::MAX);
        assert_eq!(Quota::Percent(50).resolve(u64::MAX), u64::MAX / 2 + 1);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(ChunkSize::default().sectors(), 8);
        assert_eq!("4K".parse::<ChunkSize>().unwrap(), ChunkSize::default());
        assert_eq!("64K".parse::<ChunkSize>().unwrap().sectors(), 128);
        assert_eq!("1M".parse::<ChunkSize>().unwrap().sectors(), 2048);
        for bad in ["2K", "2M", "12K", "4097", "0", "big"] {
            assert!(bad.parse::<ChunkSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn human_sizes() {
        for (bytes, text) in [
            (0, "0 B"),
            (512, "512 B"),
            (1023, "1023 B"),
            (1024, "1 KiB"),
            (4096, "4 KiB"),
            (1536, "1.5 KiB"),
            (3 << 29, "1.5 GiB"),
            ((1 << 20) - 1, "1 MiB"),
            (1 << 40, "1 TiB"),
            (u64::MAX, "16 EiB"),
        ] {
            assert_eq!(format_bytes(bytes), text, "{bytes}");
        }
    }
}
