//! What the running kernel's verifier accepts, found by asking it: a probe
//! program is loaded and thrown away, so that the choice follows the
//! kernel's behaviour (backports included), never its version string.
//!
//! One question so far: BPF atomic compare-and-exchange and exchange
//! (`BPF_ATOMIC` with `BPF_CMPXCHG`, `BPF_XCHG`; Linux 5.12), which the
//! in-flight table claims and frees its slots with. A kernel without them
//! refuses any program that holds one ("BPF_STX uses reserved fields"), so
//! the block programs come in a second set that keeps every start in the
//! hash map (`hcp-ebpf`'s `in_flight`).

use std::fmt;

/// How the block programs keep the starts of the bios and requests in
/// flight, which their completions become latency samples with. In JSON,
/// as [`InFlightMode::name`] gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlightMode {
    /// The in-flight table (an array claimed with atomic compare-and-swap),
    /// with the hash map for the few that share a slot: the fast one.
    Table,
    /// The hash map only, for kernels that refuse BPF atomics: slower per
    /// I/O (a bucket lock and a free-list element each start), as exact.
    HashMap,
}

impl InFlightMode {
    /// The name in JSON and in the layout cache.
    pub fn name(self) -> &'static str {
        match self {
            InFlightMode::Table => "table",
            InFlightMode::HashMap => "hash_map",
        }
    }

    pub fn from_name(name: &str) -> Option<InFlightMode> {
        [InFlightMode::Table, InFlightMode::HashMap].into_iter().find(|m| m.name() == name)
    }

    /// What it is and why, for people.
    pub fn describe(self) -> &'static str {
        match self {
            InFlightMode::Table => "in-flight table (BPF atomics)",
            InFlightMode::HashMap => {
                "in-flight starts in a hash map only (this kernel refuses BPF atomic compare-and-exchange, \
                 Linux 5.12+)"
            }
        }
    }

    /// The mode the running kernel allows: the table if it loads a program
    /// with the table's atomic instructions.
    pub fn for_running_kernel() -> InFlightMode {
        if accepts_atomic_exchanges() {
            InFlightMode::Table
        } else {
            InFlightMode::HashMap
        }
    }
}

impl fmt::Display for InFlightMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the kernel loads a socket filter that does a 64-bit atomic
/// compare-and-exchange and an exchange on its stack, the two instructions
/// the in-flight table needs.
fn accepts_atomic_exchanges() -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const SOCKET_FILTER: u32 = 1;
    let insns = probe_program();
    let license = c"GPL";
    // The first fields of `union bpf_attr` for BPF_PROG_LOAD; the rest
    // zero, as the kernel requires of fields it does not know or use.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        rest: [u64; 14],
    }
    let attr = ProgLoad {
        prog_type: SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        rest: [0; 14],
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size given, whose
    // pointers outlive the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>())
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a descriptor the call just gave us.
    unsafe { libc::close(fd as i32) };
    true
}

/// The probe: `*(u64 *)(r10 - 8) = 0; r0 = cmpxchg(r10 - 8, r0 = 0, 1);
/// r1 = xchg(r10 - 8, r1 = 2); return 0`.
fn probe_program() -> [u64; 9] {
    // One instruction: opcode, registers (dst low nibble, src high), offset, immediate.
    let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| -> u64 {
        u64::from(code) | u64::from(dst | (src << 4)) << 8 | u64::from(off as u16) << 16 | u64::from(imm as u32) << 32
    };
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
    const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
    const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
    const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW
    const CMPXCHG: i32 = 0xf1; // BPF_CMPXCHG | BPF_FETCH
    const XCHG: i32 = 0xe1; // BPF_XCHG | BPF_FETCH
    const EXIT: u8 = 0x95;
    let (r0, r1, r2, r10) = (0, 1, 2, 10);
    [
        insn(MOV64_IMM, r0, 0, 0, 0),
        insn(STX_DW, r10, r0, -8, 0),
        insn(MOV64_REG, r2, r10, 0, 0),
        insn(ADD64_IMM, r2, 0, 0, -8),
        insn(MOV64_IMM, r1, 0, 0, 1),
        insn(ATOMIC_DW, r2, r1, 0, CMPXCHG),
        insn(ATOMIC_DW, r2, r1, 0, XCHG),
        insn(MOV64_IMM, r0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in [InFlightMode::Table, InFlightMode::HashMap] {
            assert_eq!(InFlightMode::from_name(mode.name()), Some(mode));
        }
        assert_eq!(InFlightMode::from_name("hash"), None);
    }

    #[test]
    fn the_probe_encodes_the_atomic_instructions() {
        let p = probe_program();
        // cmpxchg: r2 is the address, r1 the new value, r0 the expected.
        assert_eq!(p[5], 0xdb | 0x12 << 8 | 0xf1 << 32);
        assert_eq!(p[6], 0xdb | 0x12 << 8 | 0xe1 << 32);
        // *(u64 *)(r10 - 8) = r0: offset -8 as 16 bits.
        assert_eq!(p[1], 0x7b | 0x0a << 8 | 0xfff8 << 16);
        assert_eq!(p[8], 0x95);
    }

    /// Every kernel hcp's host tests run on (6.x) has BPF atomics; the
    /// 5.10 guest's VM tests see the other answer.
    #[test]
    fn the_running_kernel_answers() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading a BPF program needs root");
            return;
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mode = InFlightMode::for_running_kernel();
        println!("kernel {}: {mode}", release.trim());
        let major: u32 = release.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
        if major >= 6 {
            assert_eq!(mode, InFlightMode::Table);
        }
    }
}
