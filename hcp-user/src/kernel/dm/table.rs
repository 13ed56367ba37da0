//! Device-mapper table lines.
//!
//! Each target hcp loads has one params type that both formats its part of
//! the table line and parses it back ([`TargetParams`]); nothing else builds
//! table strings. Devices are written `major:minor`, the form the kernel
//! prints back, so a loaded table reads back as it was written.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::kernel::devnum::DevNum;

/// One line of a table, in 512-byte sectors: `0 2048 linear 7:0 2048`.
///
/// `dmsetup status` lines have the same shape, with the target's status in
/// place of its params.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableLine {
    pub start: u64,
    pub length: u64,
    pub target_type: String,
    pub params: String,
}

impl TableLine {
    /// The form `devicemapper::DM::table_load` takes, one per line.
    pub fn to_tuple(&self) -> (u64, u64, String, String) {
        (self.start, self.length, self.target_type.clone(), self.params.clone())
    }
}

impl fmt::Display for TableLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.start, self.length, self.target_type)?;
        // Some targets (`error`, `zero`) take no params.
        if !self.params.is_empty() {
            write!(f, " {}", self.params)?;
        }
        Ok(())
    }
}

impl FromStr for TableLine {
    type Err = Error;

    fn from_str(text: &str) -> Result<TableLine> {
        let (start, rest) = next_word(text.trim());
        let (length, rest) = next_word(rest);
        let (target_type, params) = next_word(rest);
        let number = |word: &str| word.parse::<u64>().ok();
        match (number(start), number(length), target_type) {
            (Some(start), Some(length), target_type) if !target_type.is_empty() => {
                Ok(TableLine { start, length, target_type: target_type.to_string(), params: params.to_string() })
            }
            _ => Err(unexpected("table line", text, "<start> <length> <target type> [<params>]")),
        }
    }
}

/// The first whitespace-separated word of `text` and what follows it.
fn next_word(text: &str) -> (&str, &str) {
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    (word, rest.trim_start())
}

/// Every line of a table, as `dmsetup table <device>` prints it; an empty
/// table (a device with no table loaded) is no lines.
pub fn parse_table(text: &str) -> Result<Vec<TableLine>> {
    text.lines().filter(|line| !line.trim().is_empty()).map(str::parse).collect()
}

/// The kernel printed something hcp does not understand: not the user's
/// fault, so a system error.
pub(super) fn unexpected(what: &str, text: &str, expected: &str) -> Error {
    Error::system(format!("unexpected device-mapper {what} `{text}`: expected `{expected}`"))
}

/// The params of one target type: `Display` writes them as the table wants
/// them, `FromStr` reads them back from a table.
pub trait TargetParams: fmt::Display + FromStr<Err = Error> {
    /// The target type's name in the table.
    const TARGET: &'static str;

    /// The line mapping a whole device of `length` sectors to this target.
    fn table_line(&self, length: u64) -> TableLine {
        TableLine { start: 0, length, target_type: Self::TARGET.to_string(), params: self.to_string() }
    }

    /// The params of `line`, which must be of this target type.
    fn from_line(line: &TableLine) -> Result<Self> {
        if line.target_type != Self::TARGET {
            return Err(Error::system(format!(
                "expected a `{}` table line, found `{line}`; is this device managed by something else?",
                Self::TARGET
            )));
        }
        line.params.parse()
    }
}

/// `linear <device> <offset>`: a plain window onto `device`, from sector
/// `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub device: DevNum,
    pub offset: u64,
}

impl TargetParams for Linear {
    const TARGET: &'static str = "linear";
}

impl fmt::Display for Linear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.device, self.offset)
    }
}

impl FromStr for Linear {
    type Err = Error;

    fn from_str(text: &str) -> Result<Linear> {
        match text.split_whitespace().collect::<Vec<_>>()[..] {
            [device, offset] => {
                device.parse().ok().zip(offset.parse().ok()).map(|(device, offset)| Linear { device, offset })
            }
            _ => None,
        }
        .ok_or_else(|| unexpected("linear params", text, "<device major:minor> <offset sectors>"))
    }
}

/// `snapshot-origin <origin>`: the origin device as users see it; writes to it
/// first copy the old data into every snapshot of `origin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotOrigin {
    pub origin: DevNum,
}

impl TargetParams for SnapshotOrigin {
    const TARGET: &'static str = "snapshot-origin";
}

impl fmt::Display for SnapshotOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)
    }
}

impl FromStr for SnapshotOrigin {
    type Err = Error;

    fn from_str(text: &str) -> Result<SnapshotOrigin> {
        match text.split_whitespace().collect::<Vec<_>>()[..] {
            [origin] => origin.parse().ok().map(|origin| SnapshotOrigin { origin }),
            _ => None,
        }
        .ok_or_else(|| unexpected("snapshot-origin params", text, "<origin major:minor>"))
    }
}

/// Whether a snapshot's exceptions survive deactivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `P`: exceptions are written to the COW device; needed to merge.
    Persistent,
    /// `N`: exceptions live only in memory.
    Transient,
    /// `PO`: persistent, and a full COW device shows as `Overflow` in the
    /// status rather than as `Invalid`.
    PersistentOverflow,
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Persistence::Persistent => "P",
            Persistence::Transient => "N",
            Persistence::PersistentOverflow => "PO",
        })
    }
}

impl FromStr for Persistence {
    type Err = Error;

    fn from_str(text: &str) -> Result<Persistence> {
        match text {
            "P" => Ok(Persistence::Persistent),
            "N" => Ok(Persistence::Transient),
            "PO" => Ok(Persistence::PersistentOverflow),
            _ => Err(unexpected("snapshot persistence", text, "P, N or PO")),
        }
    }
}

/// `snapshot <origin> <cow> <P|N|PO> <chunk sectors>`: the point-in-time view
/// of `origin`, with the chunks changed since kept on `cow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub origin: DevNum,
    pub cow: DevNum,
    pub persistent: Persistence,
    /// A power of two; `ChunkSize::sectors` gives one.
    pub chunk_sectors: u64,
}

impl TargetParams for Snapshot {
    const TARGET: &'static str = "snapshot";
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.origin, self.cow, self.persistent, self.chunk_sectors)
    }
}

impl FromStr for Snapshot {
    type Err = Error;

    fn from_str(text: &str) -> Result<Snapshot> {
        parse_snapshot(text, Snapshot::TARGET)
    }
}

/// The params of `snapshot` and `snapshot-merge`, which are the same.
fn parse_snapshot(text: &str, target: &str) -> Result<Snapshot> {
    snapshot_from_fields(&text.split_whitespace().collect::<Vec<_>>()).ok_or_else(|| {
        unexpected(
            &format!("{target} params"),
            text,
            "<origin major:minor> <cow major:minor> <P|N|PO> <chunk sectors, a power of two>",
        )
    })
}

/// No feature args (`discard_zeroes_cow`, ...): hcp never sets any.
fn snapshot_from_fields(fields: &[&str]) -> Option<Snapshot> {
    let [origin, cow, persistent, chunk_sectors] = fields else {
        return None;
    };
    Some(Snapshot {
        origin: origin.parse().ok()?,
        cow: cow.parse().ok()?,
        persistent: persistent.parse().ok()?,
        chunk_sectors: chunk_sectors.parse().ok().filter(|c: &u64| c.is_power_of_two())?,
    })
}

/// `snapshot-merge`, with a snapshot's params: takes the origin's place and
/// copies the snapshot's chunks back into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMerge(pub Snapshot);

impl TargetParams for SnapshotMerge {
    const TARGET: &'static str = "snapshot-merge";
}

impl fmt::Display for SnapshotMerge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SnapshotMerge {
    type Err = Error;

    fn from_str(text: &str) -> Result<SnapshotMerge> {
        parse_snapshot(text, SnapshotMerge::TARGET).map(SnapshotMerge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: DevNum = DevNum { major: 253, minor: 1 };
    const COW: DevNum = DevNum { major: 7, minor: 2 };

    #[test]
    fn linear_round_trips() {
        let line = Linear { device: COW, offset: 2048 }.table_line(4096);
        assert_eq!(line.to_string(), "0 4096 linear 7:2 2048");
        assert_eq!(
            Linear::from_line(&line.to_string().parse().unwrap()).unwrap(),
            Linear { device: COW, offset: 2048 }
        );
        assert!("7:2".parse::<Linear>().is_err());
        assert!("7:2 x".parse::<Linear>().is_err());
    }

    fn snapshot(persistent: Persistence) -> Snapshot {
        Snapshot { origin: ORIGIN, cow: COW, persistent, chunk_sectors: 8 }
    }

    #[test]
    fn table_lines_round_trip() {
        for text in ["0 2048 linear 7:0 2048", "0 2097152 snapshot 254:11 254:12 P 16", "0 8 error"] {
            let line: TableLine = text.parse().unwrap();
            assert_eq!(line.to_string(), text);
        }
        let line: TableLine = "0 2048 linear 7:0 2048".parse().unwrap();
        assert_eq!(line.to_tuple(), (0, 2048, "linear".to_string(), "7:0 2048".to_string()));
    }

    #[test]
    fn table_lines_tolerate_extra_spaces() {
        let line: TableLine = "  0  2048\tlinear   7:0 2048 \n".parse().unwrap();
        assert_eq!(line.to_string(), "0 2048 linear 7:0 2048");
    }

    #[test]
    fn bad_table_lines() {
        for text in ["", "0", "0 2048", "x 2048 linear 7:0 0", "0 -1 linear 7:0 0"] {
            let err = text.parse::<TableLine>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{text}`")), "{err}");
        }
    }

    #[test]
    fn tables_of_several_lines() {
        let text = "0 1024 linear 8:16 0\n1024 1024 linear 8:32 0\n";
        let lines = parse_table(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].start, 1024);
        assert_eq!(lines[1].params, "8:32 0");
        assert_eq!(parse_table("").unwrap(), vec![]);
        assert_eq!(parse_table("\n").unwrap(), vec![]);
        assert!(parse_table("0 1024 linear 8:16 0\ngarbage\n").is_err());
    }

    #[test]
    fn snapshot_origin() {
        let params = SnapshotOrigin { origin: ORIGIN };
        assert_eq!(params.to_string(), "253:1");
        assert_eq!(params.table_line(2048).to_string(), "0 2048 snapshot-origin 253:1");
        assert_eq!("253:1".parse::<SnapshotOrigin>().unwrap(), params);
        assert_eq!(SnapshotOrigin::from_line(&params.table_line(2048)).unwrap(), params);
        for bad in ["", "253", "253:1 7:2"] {
            assert!(bad.parse::<SnapshotOrigin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_params_round_trip() {
        for (persistent, text) in [
            (Persistence::Persistent, "253:1 7:2 P 8"),
            (Persistence::Transient, "253:1 7:2 N 8"),
            (Persistence::PersistentOverflow, "253:1 7:2 PO 8"),
        ] {
            let params = snapshot(persistent);
            assert_eq!(params.to_string(), text);
            assert_eq!(text.parse::<Snapshot>().unwrap(), params);
        }
        let line = snapshot(Persistence::Persistent).table_line(2_097_152);
        assert_eq!(line.to_string(), "0 2097152 snapshot 253:1 7:2 P 8");
        assert_eq!(Snapshot::from_line(&line).unwrap(), snapshot(Persistence::Persistent));
    }

    #[test]
    fn bad_snapshot_params() {
        for bad in [
            "253:1 7:2 P",
            "253:1 7:2 P 12",
            "253:1 7:2 P 0",
            "253:1 7:2 X 8",
            "253:1 7:2 p 8",
            "253 7:2 P 8",
            "253:1 7:2 P 8 1 discard_zeroes_cow",
        ] {
            let err = bad.parse::<Snapshot>().unwrap_err();
            assert!(err.to_string().contains("snapshot params"), "{err}");
        }
    }

    #[test]
    fn snapshot_merge_takes_snapshot_params() {
        let merge = SnapshotMerge(snapshot(Persistence::Persistent));
        let line = merge.table_line(2_097_152);
        assert_eq!(line.to_string(), "0 2097152 snapshot-merge 253:1 7:2 P 8");
        assert_eq!(SnapshotMerge::from_line(&line).unwrap(), merge);
        let err = "253:1 7:2 P 3".parse::<SnapshotMerge>().unwrap_err();
        assert!(err.to_string().contains("snapshot-merge params"), "{err}");
    }

    #[test]
    fn from_line_checks_the_target_type() {
        let line: TableLine = "0 2097152 snapshot 254:11 254:12 P 16".parse().unwrap();
        assert!(SnapshotMerge::from_line(&line).is_err());
        assert!(SnapshotOrigin::from_line(&line).is_err());
        assert_eq!(Snapshot::from_line(&line).unwrap().chunk_sectors, 16);
    }
}
