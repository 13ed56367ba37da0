//! Tracepoint record layouts, read from tracefs `format` files.
//!
//! The eBPF programs read tracepoint fields at offsets user space hands them,
//! because layouts change between kernels (`rwbs` grew from 8 to 10 bytes,
//! `block_rq_complete` gained `ioprio`), and hard-coding one kernel's offsets
//! would read garbage on another.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where tracefs is mounted, or is mounted now by us if nowhere yet.
///
/// The kernel has tracefs but not every system mounts it (containers, minimal
/// images); without it neither the format files nor tracepoint ids are
/// readable. Mounting it at its canonical place changes nothing else.
pub fn root() -> Result<PathBuf> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let dir = PathBuf::from("/sys/kernel/tracing");
    let target = std::ffi::CString::new("/sys/kernel/tracing").expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {} failed: {err} (run as root, or mount it: mount -t tracefs tracefs /sys/kernel/tracing)", dir.display());
    }
    Ok(dir)
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The C declaration without the name, e.g. `dev_t`, `char[10]`.
    pub c_type: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The record layout of one tracepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Reads `events/<category>/<event>/format` under the tracefs root.
    pub fn read(tracefs: &Path, category: &str, event: &str) -> Result<Format> {
        let path = tracefs.join("events").join(category).join(event).join("format");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("reading tracepoint format {}", path.display()))?;
        Format::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Format> {
        let mut name = None;
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("name:") {
                name = Some(n.trim().to_string());
            } else if line.starts_with("field:") {
                fields.push(parse_field(line)?);
            }
        }
        let name = name.context("no `name:` line")?;
        if fields.is_empty() {
            bail!("no `field:` lines in the format of {name}");
        }
        Ok(Format { name, fields })
    }

    /// The offset of field `name`, checking that it is `min_size` bytes or
    /// more, so a changed type is an error rather than a wrong read.
    pub fn offset_of(&self, name: &str, min_size: u32) -> Result<u32> {
        let field = self
            .fields
            .iter()
            .find(|f| f.name == name)
            .with_context(|| format!("tracepoint {} has no field `{name}`", self.name))?;
        if field.size < min_size {
            bail!("tracepoint {} field `{name}` is {} bytes, expected at least {min_size}", self.name, field.size);
        }
        Ok(field.offset)
    }
}

/// Parses `field:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;`.
fn parse_field(line: &str) -> Result<Field> {
    let mut decl = None;
    let (mut offset, mut size) = (None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':').with_context(|| format!("bad field part `{part}` in `{line}`"))?;
        match key {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(value.trim().parse::<u32>()?),
            "size" => size = Some(value.trim().parse::<u32>()?),
            _ => {}
        }
    }
    let decl = decl.with_context(|| format!("no declaration in `{line}`"))?;
    let (offset, size) = match (offset, size) {
        (Some(o), Some(s)) => (o, s),
        _ => bail!("no offset or size in `{line}`"),
    };
    // `char rwbs[10]` -> type `char[10]`, name `rwbs`; `__data_loc char[] cmd`.
    let (c_type, ident) = decl.rsplit_once(' ').with_context(|| format!("no name in `{decl}`"))?;
    let (name, array) = match ident.find('[') {
        Some(i) => (&ident[..i], &ident[i..]),
        None => (ident, ""),
    };
    Ok(Field { c_type: format!("{}{array}", c_type.trim()), name: name.to_string(), offset, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux 6.18: `rwbs` is 10 bytes and `block_rq_complete` has `ioprio`.
    const RQ_COMPLETE_6_18: &str = "name: block_rq_complete
ID: 2107
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;
\tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;
\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:44;\tsize:4;\tsigned:0;

print fmt: \"%d,%d %s (%s) %llu + %u [%d]\", REC->dev
";

    // Linux 6.1: 8-byte `rwbs`, no `ioprio`.
    const RQ_COMPLETE_6_1: &str = "name: block_rq_complete
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:int error;\toffset:28;\tsize:4;\tsigned:1;
\tfield:char rwbs[8];\toffset:32;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:40;\tsize:4;\tsigned:0;
";

    #[test]
    fn reads_offsets_that_moved_between_kernels() {
        let new = Format::parse(RQ_COMPLETE_6_18).unwrap();
        let old = Format::parse(RQ_COMPLETE_6_1).unwrap();
        assert_eq!(new.name, "block_rq_complete");
        assert_eq!(new.offset_of("rwbs", 8).unwrap(), 34);
        assert_eq!(old.offset_of("rwbs", 8).unwrap(), 32);
        assert_eq!(new.offset_of("dev", 4).unwrap(), 8);
        assert_eq!(new.offset_of("nr_sector", 4).unwrap(), 24);
    }

    #[test]
    fn parses_types_names_and_arrays() {
        let f = Format::parse(RQ_COMPLETE_6_18).unwrap();
        let rwbs = f.fields.iter().find(|f| f.name == "rwbs").unwrap();
        assert_eq!(rwbs.c_type, "char[10]");
        assert_eq!(rwbs.size, 10);
        let cmd = f.fields.iter().find(|f| f.name == "cmd").unwrap();
        assert_eq!(cmd.c_type, "__data_loc char[]");
        let ty = f.fields.iter().find(|f| f.name == "common_type").unwrap();
        assert_eq!(ty.c_type, "unsigned short");
        assert_eq!(f.fields.len(), 11);
    }

    #[test]
    fn missing_or_shrunk_fields_are_errors() {
        let f = Format::parse(RQ_COMPLETE_6_18).unwrap();
        let err = f.offset_of("nosuch", 1).unwrap_err().to_string();
        assert!(err.contains("has no field `nosuch`"), "{err}");
        let err = f.offset_of("ioprio", 4).unwrap_err().to_string();
        assert!(err.contains("is 2 bytes, expected at least 4"), "{err}");
    }

    #[test]
    fn rejects_text_that_is_not_a_format() {
        assert!(Format::parse("").is_err());
        assert!(Format::parse("name: x\nformat:\n").is_err());
        assert!(Format::parse("name: x\n\tfield:int a;\toffset:zz;\tsize:4;\n").is_err());
    }
}
