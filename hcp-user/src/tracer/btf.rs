//! Byte offsets of kernel struct members, from the running kernel's BTF.
//!
//! aya's Rust eBPF programs get no CO-RE field relocations, so they read
//! kernel structs (with BTF-checked loads in tp_btf programs, with
//! `bpf_probe_read_kernel` elsewhere) at offsets that user space looks up
//! here and writes into read-only globals before load, as it does for
//! tracepoint records (see `tracefs`); the few flag bits they test
//! (`__REQ_FUA`) are enumerators, looked up here too. Struct layouts move
//! between kernels and configs, so hard-coded offsets would read garbage.
//!
//! aya keeps its BTF types crate-private, so this is a reader of its own for
//! the part of the format (the kernel's Documentation/bpf/btf.rst) that member
//! lookup needs. It is ours rather than the btf-rs crate's because btf-rs is
//! LGPL (hcp is MIT/Apache), pulls in a proc-macro crate and mmap support,
//! and would still leave the nested-path walk below to us.

use crate::error::{Error, Result};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// Type kinds, from include/uapi/linux/btf.h.
const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const ENUM: u8 = 6;
const FWD: u8 = 7;
const TYPEDEF: u8 = 8;
const VOLATILE: u8 = 9;
const CONST: u8 = 10;
const RESTRICT: u8 = 11;
const FUNC: u8 = 12;
const FUNC_PROTO: u8 = 13;
const VAR: u8 = 14;
const DATASEC: u8 = 15;
const FLOAT: u8 = 16;
const DECL_TAG: u8 = 17;
const TYPE_TAG: u8 = 18;
const ENUM64: u8 = 19;

/// How deep typedef chains and anonymous members may nest before the blob is
/// taken to be cyclic; real kernel types stay far below this.
const MAX_DEPTH: u32 = 32;

/// One type, reduced to what member lookup needs. The index in
/// `KernelBtf::types` is the type id; id 0 is `void`.
#[derive(Clone, Copy, Default)]
struct Type {
    name: u32,
    kind: u8,
    kind_flag: bool,
    /// The size in bytes (INT, STRUCT, UNION, ENUM*, FLOAT) or the referenced
    /// type id (PTR, TYPEDEF, the modifiers).
    size_or_type: u32,
    /// INT: the encoding word. ARRAY: the element type id. STRUCT, UNION,
    /// ENUM, ENUM64: where its members (enumerators) start in the blob,
    /// read only when looked at.
    extra: u32,
    /// ARRAY: the element count. STRUCT, UNION, ENUM*: the member count.
    /// FUNC_PROTO: the parameter count (and `extra` where they start).
    count: u32,
}

struct Member {
    name: u32,
    type_id: u32,
    /// The raw offset word: a bit offset, or with the struct's kind_flag,
    /// bitfield size (high 8 bits) and bit offset (low 24 bits).
    offset: u32,
}

/// A resolved member: where it starts and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    bit_offset: u32,
    /// Nonzero for a bitfield.
    bits: u32,
    type_id: u32,
}

/// The kernel's types, parsed once; look members up with
/// [`KernelBtf::member_offset`] and [`KernelBtf::member_size`].
///
/// The parse walks every type once, keeping a few words of each; members
/// and enumerators stay in the blob and are read only for the types looked
/// at (a kernel's BTF has some 100,000 types and 5 MB, and hcp looks at a
/// dozen structs).
pub struct KernelBtf {
    /// The whole blob.
    bytes: Vec<u8>,
    /// Where the string section is in `bytes`.
    strings: std::ops::Range<usize>,
    types: Vec<Type>,
    /// The ids of the named structs and unions, the only types looked up by
    /// name for members.
    composites: Vec<u32>,
    /// The ids of the enums, for enumerator lookups.
    enums: Vec<u32>,
    /// Whose BTF this is, for messages: "kernel 6.12.48-amd64".
    source: String,
}

impl KernelBtf {
    /// Reads the running kernel's BTF from /sys/kernel/btf/vmlinux.
    pub fn load() -> Result<KernelBtf> {
        let bytes = match std::fs::read(VMLINUX) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::refused(format!(
                    "{VMLINUX} does not exist: this kernel was built without CONFIG_DEBUG_INFO_BTF, \
                     which hcp needs to find kernel struct members"
                )));
            }
            Err(err) => return Err(Error::io(format!("reading {VMLINUX}"), err)),
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let source = match release.trim() {
            "" => "the running kernel".to_string(),
            release => format!("kernel {release}"),
        };
        Self::parse_from(bytes, source).map_err(|e| e.context(VMLINUX))
    }

    /// Parses a raw BTF blob (the contents of /sys/kernel/btf/vmlinux).
    pub fn parse(bytes: &[u8]) -> Result<KernelBtf> {
        Self::parse_from(bytes.to_vec(), "the given BTF".to_string())
    }

    /// The byte offset of `path` ("bio.bi_iter.bi_size": a struct name, then
    /// members) from the start of the outer struct.
    pub fn member_offset(&self, path: &str) -> Result<u32> {
        self.offset_of(path, self.resolve(path)?)
    }

    fn offset_of(&self, path: &str, found: Found) -> Result<u32> {
        if !found.bit_offset.is_multiple_of(8) {
            return Err(Error::refused(format!(
                "{path}: a bitfield at bit {} of {}, not on a byte boundary ({})",
                found.bit_offset,
                outer(path),
                self.source
            )));
        }
        Ok(found.bit_offset / 8)
    }

    /// The size in bytes of the member at `path`, through typedefs and
    /// qualifiers; a pointer is 8 bytes (the kernels hcp supports are 64-bit).
    pub fn member_size(&self, path: &str) -> Result<u32> {
        self.size_of_member(path, self.resolve(path)?)
    }

    fn size_of_member(&self, path: &str, found: Found) -> Result<u32> {
        if found.bits != 0 {
            return Err(Error::refused(format!(
                "{path}: a bitfield of {} bits in {}, not readable as whole bytes ({})",
                found.bits,
                outer(path),
                self.source
            )));
        }
        self.size_of(found.type_id)
            .ok_or_else(|| Error::refused(format!("{path}: a member of unknown size ({})", self.source)))
    }

    /// [`Self::member_offset`] and [`Self::member_size`] of `path`, looked
    /// up once: its byte offset and size.
    pub fn member(&self, path: &str) -> Result<(u32, u32)> {
        let found = self.resolve(path)?;
        let size = self.size_of_member(path, found)?;
        Ok((self.offset_of(path, found)?, size))
    }

    /// The value of the enumerator `name` (such as `__REQ_FUA`, the bit
    /// number of a request flag), which every enum that has it must agree on.
    pub fn enum_value(&self, name: &str) -> Result<i64> {
        let mut values = self.enumerators().filter(|(n, _)| self.name_is(*n, name)).map(|(_, v)| v);
        let Some(value) = values.next() else {
            return Err(Error::refused(format!("no enumerator {name} ({})", self.source)));
        };
        if values.any(|v| v != value) {
            return Err(Error::refused(format!("enumerator {name} has conflicting values ({})", self.source)));
        }
        Ok(value)
    }

    /// The id of the (first) typedef `name`: the kernel names a raw
    /// tracepoint's type `btf_trace_<event>`, and a `tp_btf` program is
    /// loaded against that id (aya looks it up the same way).
    pub fn typedef_id(&self, name: &str) -> Result<u32> {
        (1..self.types.len() as u32)
            .find(|&id| self.types[id as usize].kind == TYPEDEF && self.name_is(self.types[id as usize].name, name))
            .ok_or_else(|| Error::refused(format!("no typedef {name} ({})", self.source)))
    }

    /// Where among raw tracepoint `event`'s arguments is the first of type
    /// `arg`, counted from 0 as a tp_btf program's context holds them (the
    /// parameters of the `btf_trace_<event>` typedef after its leading
    /// `void *`). `arg` is a pointer to a struct ("struct bio *") or a
    /// typedef's name ("dev_t"). Tracepoints change their prototypes
    /// between kernels (Linux 5.11 took the queue off `block_bio_queue`).
    pub fn tracepoint_arg(&self, event: &str, arg: &str) -> Result<u32> {
        let typedef = format!("btf_trace_{event}");
        let missing =
            || Error::refused(format!("raw tracepoint {event} has no argument of type {arg} ({})", self.source));
        let proto = self
            .strip(self.typedef_id(&typedef)?)
            .map(|id| self.types[id as usize])
            .filter(|t| t.kind == PTR)
            .and_then(|ptr| self.strip(ptr.size_or_type))
            .map(|id| self.types[id as usize])
            .filter(|t| t.kind == FUNC_PROTO)
            .ok_or_else(|| Error::refused(format!("{typedef} is not a function pointer ({})", self.source)))?;
        let struct_name = arg.strip_prefix("struct ").and_then(|a| a.strip_suffix(" *"));
        let is_arg = |type_id: u32| match struct_name {
            Some(name) => self
                .strip(type_id)
                .map(|id| self.types[id as usize])
                .filter(|t| t.kind == PTR)
                .and_then(|ptr| self.composite(ptr.size_or_type))
                .is_some_and(|id| self.name_is(self.types[id as usize].name, name)),
            None => self.types.get(type_id as usize).is_some_and(|t| t.kind == TYPEDEF && self.name_is(t.name, arg)),
        };
        // Parameter 0 is the tracepoint's `void *` data, not an argument.
        (1..proto.count)
            .find(|&i| is_arg(self.word(proto.extra as usize + i as usize * 8 + 4)))
            .map(|i| i - 1)
            .ok_or_else(missing)
    }

    /// Every enumerator of every enum: (name, value). Signed or not
    /// (kind_flag), the flag values hcp looks up are small and positive
    /// either way.
    fn enumerators(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.enums.iter().flat_map(move |&id| {
            let t = self.types[id as usize];
            let wide = t.kind == ENUM64;
            let stride = if wide { 12 } else { 8 };
            (0..t.count as usize).map(move |i| {
                let at = t.extra as usize + i * stride;
                let name = self.word(at);
                let value = if wide {
                    (u64::from(self.word(at + 8)) << 32 | u64::from(self.word(at + 4))) as i64
                } else {
                    i64::from(self.word(at + 4) as i32)
                };
                (name, value)
            })
        })
    }

    /// Member `i` of struct or union `t` (checked at parse to be in the blob).
    fn member_at(&self, t: &Type, i: u32) -> Member {
        let at = t.extra as usize + i as usize * 12;
        Member { name: self.word(at), type_id: self.word(at + 4), offset: self.word(at + 8) }
    }

    /// The word at byte `at` of the blob, which the parse checked is there.
    fn word(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    fn parse_from(bytes: Vec<u8>, source: String) -> Result<KernelBtf> {
        let bad = |what: &str| Error::system(format!("malformed BTF: {what}"));
        let word = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
        if bytes.len() < HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        // Sysfs BTF is in the kernel's byte order, which is ours.
        match u16::from_ne_bytes([bytes[0], bytes[1]]) {
            MAGIC => {}
            m if m == MAGIC.swap_bytes() => return Err(bad("the other byte order than this machine's")),
            _ => return Err(bad("no BTF magic number")),
        }
        if bytes[2] != 1 {
            return Err(bad(&format!("version {}, expected 1", bytes[2])));
        }
        // Offsets count from the end of the header, whose length is given so
        // that newer headers (more fields after these) still parse.
        let header_len = word(4).expect("header checked") as usize;
        let section = |off_at: usize| -> Result<std::ops::Range<usize>> {
            let start = header_len + word(off_at).expect("header checked") as usize;
            let end = start + word(off_at + 4).expect("header checked") as usize;
            if header_len < HEADER_LEN || end > bytes.len() {
                return Err(bad("a section runs past the end"));
            }
            Ok(start..end)
        };
        let (type_sec, str_sec) = (section(8)?, section(16)?);

        let mut types = vec![Type::default()];
        let (mut composites, mut enums) = (Vec::new(), Vec::new());
        let mut w = Words { bytes: &bytes[..type_sec.end], at: type_sec.start };
        while w.at < type_sec.end {
            let (name, info, size_or_type) = (w.next()?, w.next()?, w.next()?);
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = info & 0xffff;
            let mut t = Type { name, kind, kind_flag: info >> 31 != 0, size_or_type, extra: 0, count: 0 };
            // Every kind's trailing data must be skipped, even those we never
            // look at, to reach the next type.
            let skip_words = match kind {
                INT => {
                    t.extra = w.next()?;
                    0
                }
                ARRAY => {
                    t.extra = w.next()?;
                    w.next()?; // index type
                    t.count = w.next()?;
                    0
                }
                STRUCT | UNION | ENUM | ENUM64 => {
                    // Read when looked at: kept as where they start.
                    t.extra = u32::try_from(w.at).map_err(|_| bad("larger than 4 GiB"))?;
                    t.count = vlen;
                    let id = types.len() as u32;
                    match kind {
                        STRUCT | UNION if name != 0 => composites.push(id),
                        ENUM | ENUM64 => enums.push(id),
                        _ => {}
                    }
                    let words_each = if kind == ENUM { 2 } else { 3 };
                    words_each * vlen
                }
                FUNC_PROTO => {
                    // Parameters, read when looked at (tracepoint prototypes).
                    t.extra = u32::try_from(w.at).map_err(|_| bad("larger than 4 GiB"))?;
                    t.count = vlen;
                    2 * vlen
                }
                DATASEC => 3 * vlen,
                VAR | DECL_TAG => 1,
                PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
                _ => return Err(bad(&format!("unknown kind {kind} at type id {}", types.len()))),
            };
            w.skip(skip_words)?;
            types.push(t);
        }
        Ok(KernelBtf { strings: str_sec, bytes, types, composites, enums, source })
    }

    fn resolve(&self, path: &str) -> Result<Found> {
        let mut parts = path.split('.');
        let outer = parts.next().unwrap_or_default();
        let members: Vec<&str> = parts.collect();
        if outer.is_empty() || members.is_empty() || members.iter().any(|m| m.is_empty()) {
            return Err(Error::usage(format!("{path:?}: expected struct.member[.member...]")));
        }
        // A name has several definitions when they differ (vmlinux on 6.18
        // has a dozen such, e.g. `console`). Those without the path are
        // passed over; those with it must agree, or nothing is safe to read.
        let mut answer: Option<Result<Found>> = None;
        for &id in &self.composites {
            if !self.name_is(self.types[id as usize].name, outer) {
                continue;
            }
            let this = self.walk(id, outer, &members);
            answer = match (answer, this) {
                (Some(Ok(a)), Ok(b)) if !self.same_layout(a, b) => {
                    return Err(Error::refused(format!(
                        "{path}: struct {outer} has conflicting definitions ({})",
                        self.source
                    )));
                }
                (Some(Ok(a)), _) => Some(Ok(a)),
                (_, this) => Some(this),
            };
        }
        answer.unwrap_or_else(|| Err(Error::refused(format!("{path}: no struct {outer} ({})", self.source))))
    }

    fn same_layout(&self, a: Found, b: Found) -> bool {
        (a.bit_offset, a.bits, self.size_of(a.type_id)) == (b.bit_offset, b.bits, self.size_of(b.type_id))
    }

    /// Follows `members` down from struct `id`, summing offsets.
    fn walk(&self, id: u32, outer: &str, members: &[&str]) -> Result<Found> {
        let mut at = Found { bit_offset: 0, bits: 0, type_id: id };
        let mut parent = outer;
        for (i, &member) in members.iter().enumerate() {
            let path = || format!("{outer}.{}", members[..=i].join("."));
            let Some(composite) = self.composite(at.type_id) else {
                return Err(Error::refused(format!("{}: {parent} is not a struct or union ({})", path(), self.source)));
            };
            let Some(found) = self.find_member(composite, member, 0) else {
                return Err(Error::refused(format!("{}: {parent} has no member {member} ({})", path(), self.source)));
            };
            at = Found { bit_offset: at.bit_offset.saturating_add(found.bit_offset), ..found };
            parent = member;
        }
        Ok(at)
    }

    /// Member `name` of struct or union `id`, looking inside anonymous
    /// struct and union members as C does.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<Found> {
        let t = self.types[id as usize];
        for m in (0..t.count).map(|i| self.member_at(&t, i)) {
            let (mut bit_offset, mut bits) =
                if t.kind_flag { (m.offset & 0xff_ffff, m.offset >> 24) } else { (m.offset, 0) };
            if !t.kind_flag {
                // Without kind_flag a bitfield shows as an INT whose encoding
                // gives an extra bit offset and a width below its size.
                if let Some(int) = self.types.get(m.type_id as usize).filter(|i| i.kind == INT) {
                    let (width, extra) = (int.extra & 0xff, (int.extra >> 16) & 0xff);
                    bit_offset = bit_offset.saturating_add(extra);
                    bits = if int.size_or_type.checked_mul(8) == Some(width) && extra == 0 { 0 } else { width };
                }
            }
            if self.name(m.name).is_empty() && depth < MAX_DEPTH {
                if let Some(inner) = self.composite(m.type_id) {
                    if let Some(f) = self.find_member(inner, name, depth + 1) {
                        return Some(Found { bit_offset: bit_offset.saturating_add(f.bit_offset), ..f });
                    }
                }
            } else if self.name_is(m.name, name) {
                return Some(Found { bit_offset, bits, type_id: m.type_id });
            }
        }
        None
    }

    /// The struct or union behind `id`, through typedefs and qualifiers.
    fn composite(&self, id: u32) -> Option<u32> {
        let id = self.strip(id)?;
        matches!(self.types[id as usize].kind, STRUCT | UNION).then_some(id)
    }

    /// `id` with typedefs and qualifiers followed away.
    fn strip(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_DEPTH {
            let t = self.types.get(id as usize)?;
            match t.kind {
                TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => id = t.size_or_type,
                _ => return Some(id),
            }
        }
        None
    }

    /// The size in bytes of type `id`; `None` for void, functions and
    /// forward declarations.
    fn size_of(&self, mut id: u32) -> Option<u32> {
        // Arrays of arrays multiply up; a loop rather than recursion, so a
        // cyclic blob ends at MAX_DEPTH.
        let mut count = 1u32;
        for _ in 0..MAX_DEPTH {
            let t = self.types[self.strip(id)? as usize];
            match t.kind {
                INT | STRUCT | UNION | ENUM | ENUM64 | FLOAT => return t.size_or_type.checked_mul(count),
                PTR => return count.checked_mul(8),
                ARRAY => (id, count) = (t.extra, count.checked_mul(t.count)?),
                _ => return None,
            }
        }
        None
    }

    /// The NUL-terminated name at `off` in the string section.
    fn name(&self, off: u32) -> &[u8] {
        let strings = &self.bytes[self.strings.clone()];
        let tail = strings.get(off as usize..).unwrap_or_default();
        &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())]
    }

    /// Whether the string at `off` is `name`, without measuring the string
    /// first (most names differ in their first bytes).
    fn name_is(&self, off: u32, name: &str) -> bool {
        let strings = &self.bytes[self.strings.clone()];
        let Some(tail) = strings.get(off as usize..) else { return name.is_empty() };
        tail.starts_with(name.as_bytes()) && tail.get(name.len()).is_none_or(|&b| b == 0)
    }
}

/// Reads the type section a word at a time.
struct Words<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Words<'_> {
    fn next(&mut self) -> Result<u32> {
        let word = self.bytes.get(self.at..self.at + 4);
        let word = word.ok_or_else(|| Error::system("malformed BTF: a type runs past the end"))?;
        self.at += 4;
        Ok(u32::from_ne_bytes(word.try_into().expect("4 bytes")))
    }

    /// Skips `words` words, checking they are there.
    fn skip(&mut self, words: u32) -> Result<()> {
        let end = self.at + words as usize * 4;
        if end > self.bytes.len() {
            return Err(Error::system("malformed BTF: a type runs past the end"));
        }
        self.at = end;
        Ok(())
    }
}

fn outer(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a BTF blob type by type; ids are handed out in order from 1.
    struct Blob {
        strings: Vec<u8>,
        types: Vec<u32>,
        next_id: u32,
    }

    impl Blob {
        fn new() -> Blob {
            Blob { strings: vec![0], types: Vec::new(), next_id: 1 }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        /// A type with `vlen`, `kind_flag` and the words that follow it.
        fn add(&mut self, name: &str, kind: u8, vlen: u32, kind_flag: bool, size_or_type: u32, tail: &[u32]) -> u32 {
            let name = self.name(name);
            let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen;
            self.types.extend([name, info, size_or_type]);
            self.types.extend_from_slice(tail);
            self.next_id += 1;
            self.next_id - 1
        }

        fn composite(&mut self, kind: u8, name: &str, size: u32, kind_flag: bool, members: &[(&str, u32, u32)]) -> u32 {
            let mut tail = Vec::new();
            for &(member, type_id, offset) in members {
                tail.extend([self.name(member), type_id, offset]);
            }
            self.add(name, kind, members.len() as u32, kind_flag, size, &tail)
        }

        fn finish(self) -> Vec<u8> {
            let type_len = self.types.len() as u32 * 4;
            let mut out = Vec::new();
            out.extend(MAGIC.to_ne_bytes());
            out.extend([1, 0]);
            for w in [HEADER_LEN as u32, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend(w.to_ne_bytes());
            }
            for w in self.types {
                out.extend(w.to_ne_bytes());
            }
            out.extend(self.strings);
            out
        }
    }

    /// A `struct bio` lookalike with every kind before it, so that skipping
    /// each kind's trailing data is tested too.
    fn sample() -> Vec<u8> {
        let mut b = Blob::new();
        let uint = b.add("unsigned int", INT, 0, false, 4, &[32]);
        let u64_ = b.add("long long unsigned int", INT, 0, false, 8, &[64]);
        let u32_ = b.add("u32", TYPEDEF, 0, false, uint, &[]);
        let sector_t = b.add("sector_t", TYPEDEF, 0, false, u64_, &[]);
        let (a, c) = (b.name("A"), b.name("B"));
        b.add("req_op", ENUM, 2, false, 4, &[a, 0, c, 1]);
        b.add("big", ENUM64, 1, false, 8, &[a, 1, 2]);
        let proto = b.add("", FUNC_PROTO, 2, false, uint, &[0, uint, 0, u64_]);
        let func = b.add("submit_bio", FUNC, 0, false, proto, &[]);
        let var = b.add("x", VAR, 0, false, uint, &[1]);
        b.add(".data", DATASEC, 1, false, 4, &[var, 0, 4]);
        b.add("tag", DECL_TAG, 0, false, func, &[u32::MAX]);
        b.add("double", FLOAT, 0, false, 8, &[]);
        b.add("request", FWD, 0, false, 0, &[]);
        let iter = b.composite(STRUCT, "bvec_iter", 16, false, &[("bi_sector", sector_t, 0), ("bi_size", u32_, 64)]);
        let bdev = b.composite(STRUCT, "block_device", 16, false, &[("bd_start", sector_t, 0), ("bd_dev", u32_, 64)]);
        let bdev_ptr = b.add("", PTR, 0, false, bdev, &[]);
        let tagged_ptr = b.add("user", TYPE_TAG, 0, false, bdev_ptr, &[]);
        let const_iter = b.add("", CONST, 0, false, iter, &[]);
        let volatile_iter = b.add("", VOLATILE, 0, false, const_iter, &[]);
        let iter_t = b.add("iter_t", TYPEDEF, 0, false, volatile_iter, &[]);
        let halves = b.composite(STRUCT, "", 8, false, &[("lo", u32_, 0), ("hi", u32_, 32)]);
        let either = b.composite(UNION, "", 8, false, &[("whole", u64_, 0), ("", halves, 0)]);
        let vec4 = b.add("", ARRAY, 0, false, 0, &[uint, uint, 4]);
        // kind_flag: offsets carry the bitfield width in their high byte.
        b.composite(
            STRUCT,
            "bio",
            56,
            true,
            &[
                ("bi_bdev", bdev_ptr, 0),
                ("bi_opf", u32_, 64),
                ("bi_flags", uint, (3 << 24) | 96),
                ("bi_ioprio", uint, (5 << 24) | 99),
                ("", either, 128),
                ("bi_iter", iter_t, 192),
                ("bi_vec", vec4, 320),
                ("bi_user", tagged_ptr, 448),
            ],
        );
        // The older bitfield encoding: a 4-bit INT at bit 4 of its word.
        let nibble = b.add("unsigned int", INT, 0, false, 4, &[(4 << 16) | 4]);
        let byte = b.add("unsigned char", INT, 0, false, 1, &[8]);
        b.composite(STRUCT, "old", 8, false, &[("mode", nibble, 32), ("tail", byte, 40)]);
        b.finish()
    }

    #[test]
    fn offsets_and_sizes() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        for (path, offset, size) in [
            ("bio.bi_bdev", 0, 8),
            ("bio.bi_opf", 8, 4),
            ("bio.whole", 16, 8),
            ("bio.hi", 20, 4),
            ("bio.bi_iter", 24, 16),
            ("bio.bi_iter.bi_sector", 24, 8),
            ("bio.bi_iter.bi_size", 32, 4),
            ("bio.bi_vec", 40, 16),
            ("bio.bi_user", 56, 8),
            ("block_device.bd_dev", 8, 4),
            ("old.tail", 5, 1),
        ] {
            assert_eq!(btf.member_offset(path).unwrap(), offset, "offset of {path}");
            assert_eq!(btf.member_size(path).unwrap(), size, "size of {path}");
        }
    }

    #[test]
    fn bitfields() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("bio.bi_flags").unwrap(), 12);
        let err = btf.member_size("bio.bi_flags").unwrap_err();
        assert!(err.message().contains("bitfield of 3 bits"), "{err}");
        let err = btf.member_offset("bio.bi_ioprio").unwrap_err();
        assert!(err.message().contains("bio.bi_ioprio") && err.message().contains("bit 99"), "{err}");
        assert_eq!(btf.member_offset("old.mode").unwrap_err().kind, crate::error::Kind::Refused);
        assert!(btf.member_size("old.mode").unwrap_err().message().contains("bitfield of 4 bits"));
    }

    #[test]
    fn errors_name_struct_member_and_source() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        let err = btf.member_offset("bio.bi_iter.bi_nope").unwrap_err();
        assert_eq!(err.message(), "bio.bi_iter.bi_nope: bi_iter has no member bi_nope (the given BTF)");
        let err = btf.member_offset("request.q").unwrap_err();
        assert_eq!(err.message(), "request.q: no struct request (the given BTF)");
        // Pointers are not followed: that would be a second read.
        let err = btf.member_offset("bio.bi_bdev.bd_dev").unwrap_err();
        assert_eq!(err.message(), "bio.bi_bdev.bd_dev: bi_bdev is not a struct or union (the given BTF)");
        for path in ["bio", "bio.", ".bi_opf", "bio..bi_opf"] {
            assert_eq!(btf.member_offset(path).unwrap_err().kind, crate::error::Kind::Usage, "{path}");
        }
    }

    #[test]
    fn malformed_blobs() {
        let blob = sample();
        for (bytes, what) in [
            (&blob[..10], "shorter than its header"),
            (&blob[..blob.len() - 1], "past the end"),
            (&[0u8; 24][..], "no BTF magic"),
        ] {
            let err = KernelBtf::parse(bytes).err().expect("must fail");
            assert!(err.message().contains(what), "{err}");
        }
        let mut unknown = Blob::new();
        unknown.add("", 31, 0, false, 0, &[]);
        let err = KernelBtf::parse(&unknown.finish()).err().expect("must fail");
        assert!(err.message().contains("unknown kind 31"), "{err}");
    }

    /// The members hcp reads, in the BTF of the kernel running the tests.
    #[test]
    fn running_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipped: {VMLINUX} does not exist (kernel built without CONFIG_DEBUG_INFO_BTF)");
            return;
        }
        let start = std::time::Instant::now();
        let btf = KernelBtf::load().unwrap();
        let loaded = start.elapsed();
        let bytes = std::fs::read(VMLINUX).unwrap();
        let start = std::time::Instant::now();
        KernelBtf::parse(&bytes).unwrap();
        let parsed = start.elapsed();
        let types = btf.types.len() - 1;
        println!("{}: {types} types; read and parsed in {loaded:?}, parsed alone in {parsed:?}", btf.source);
        for (path, size) in [
            ("bio.bi_bdev", 8),
            ("bio.bi_opf", 4),
            ("bio.bi_iter.bi_sector", 8),
            ("bio.bi_iter.bi_size", 4),
            ("block_device.bd_dev", 4),
            ("block_device.bd_disk", 8),
            ("gendisk.major", 4),
            ("gendisk.first_minor", 4),
            ("request.q", 8),
            ("request_queue.disk", 8),
        ] {
            let offset = btf.member_offset(path).unwrap();
            let found = btf.member_size(path).unwrap();
            println!("  {path}: offset {offset}, size {found}");
            assert_eq!(found, size, "size of {path}");
        }
        let fua = btf.enum_value("__REQ_FUA").unwrap();
        println!("  __REQ_FUA: {fua}");
        assert!((8..32).contains(&fua), "a flag bit above the 8 operation bits of a 32-bit opf");
    }

    #[test]
    fn typedefs_by_name() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.typedef_id("u32").unwrap(), 3);
        assert_eq!(btf.typedef_id("sector_t").unwrap(), 4);
        assert!(btf.typedef_id("u3").unwrap_err().to_string().contains("no typedef u3"));
        assert!(btf.typedef_id("bio").is_err(), "a struct, not a typedef");
    }

    #[test]
    fn enumerators() {
        let btf = KernelBtf::parse(&sample()).unwrap();
        assert_eq!(btf.enum_value("B").unwrap(), 1);
        let err = btf.enum_value("A").unwrap_err().to_string();
        assert!(err.contains("conflicting"), "A is 0 in one enum, 2^33 + 1 in another: {err}");
        assert!(btf.enum_value("C").unwrap_err().to_string().contains("no enumerator C"));
    }

    /// Two prototypes of `block_bio_remap`: Linux 6.x's `(bio, dev, from)`
    /// and 5.10's `(q, bio, dev, from)`, each behind its `btf_trace_`
    /// typedef (a pointer to a function prototype whose first parameter is
    /// the `void *` data).
    #[test]
    fn tracepoint_arguments_by_type() {
        let mut b = Blob::new();
        let uint = b.add("unsigned int", INT, 0, false, 4, &[32]);
        let dev_t = b.add("dev_t", TYPEDEF, 0, false, uint, &[]);
        let bio = b.composite(STRUCT, "bio", 8, false, &[("bi_opf", uint, 0)]);
        let queue = b.composite(STRUCT, "request_queue", 8, false, &[("id", uint, 0)]);
        let (bio_ptr, queue_ptr, void_ptr) = (
            b.add("", PTR, 0, false, bio, &[]),
            b.add("", PTR, 0, false, queue, &[]),
            b.add("", PTR, 0, false, 0, &[]),
        );
        let new = b.add("", FUNC_PROTO, 4, false, 0, &[0, void_ptr, 0, bio_ptr, 0, dev_t, 0, uint]);
        let new_ptr = b.add("", PTR, 0, false, new, &[]);
        b.add("btf_trace_new_remap", TYPEDEF, 0, false, new_ptr, &[]);
        let old = b.add("", FUNC_PROTO, 5, false, 0, &[0, void_ptr, 0, queue_ptr, 0, bio_ptr, 0, dev_t, 0, uint]);
        let old_ptr = b.add("", PTR, 0, false, old, &[]);
        b.add("btf_trace_old_remap", TYPEDEF, 0, false, old_ptr, &[]);
        b.add("btf_trace_not_a_function", TYPEDEF, 0, false, uint, &[]);
        let btf = KernelBtf::parse(&b.finish()).unwrap();
        assert_eq!(btf.tracepoint_arg("new_remap", "struct bio *").unwrap(), 0);
        assert_eq!(btf.tracepoint_arg("new_remap", "dev_t").unwrap(), 1);
        assert_eq!(btf.tracepoint_arg("old_remap", "struct bio *").unwrap(), 1);
        assert_eq!(btf.tracepoint_arg("old_remap", "dev_t").unwrap(), 2);
        assert_eq!(btf.tracepoint_arg("old_remap", "struct request_queue *").unwrap(), 0);
        let err = btf.tracepoint_arg("new_remap", "struct request *").unwrap_err().to_string();
        assert!(err.contains("has no argument of type struct request *"), "{err}");
        assert!(btf.tracepoint_arg("new_remap", "unsigned int").is_err(), "an INT is not a typedef");
        assert!(btf.tracepoint_arg("not_a_function", "dev_t").unwrap_err().to_string().contains("not a function"));
        assert!(btf.tracepoint_arg("missing", "dev_t").unwrap_err().to_string().contains("no typedef"));
    }
}
