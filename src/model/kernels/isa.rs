//! Which instruction set the CPU kernels are compiled for at run time.
//!
//! The release binary targets baseline x86-64 so that it runs anywhere; each hot kernel has
//! one copy per level here, chosen when a network is loaded (it is part of
//! [`crate::model::LoadOptions`], and a packed weight records the kernel it was packed
//! for). The best level the CPU has is detected once per process; `CLASSIFY_CPU_ISA` forces
//! a lower one (tests and benchmarks compare levels; asking for one the CPU lacks is an
//! error, never a silent fallback).

use std::sync::OnceLock;

/// The environment variable that caps the instruction set (`scalar`, `avx2`, `avx512`).
pub const ENV: &str = "CLASSIFY_CPU_ISA";

/// Instruction-set levels, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust loops (auto-vectorised for the build target only): every CPU.
    Scalar,
    /// x86-64 AVX2 + FMA: 8-wide f32 vectors, 16 registers.
    Avx2,
    /// x86-64 AVX-512 F (+ AVX2, FMA): 16-wide f32 vectors, 32 registers.
    Avx512,
}

#[derive(Debug, thiserror::Error)]
pub enum IsaError {
    #[error("{ENV}={value}: not an instruction set (use scalar, avx2 or avx512)")]
    Unknown { value: String },
    #[error("{ENV}={asked}: this CPU does not have {asked} (it has up to {best})")]
    Unsupported { asked: Isa, best: Isa },
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best level this CPU has (detected once).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(detect)
    }

    /// Every level this CPU can run, lowest first.
    pub fn supported() -> impl Iterator<Item = Isa> {
        Self::ALL.into_iter().filter(|&i| i <= Self::best())
    }

    /// The level to use: the best the CPU has, or the one `CLASSIFY_CPU_ISA` names.
    pub fn from_env() -> Result<Isa, IsaError> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(Self::best()),
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = IsaError;

    /// A level name, refused where this CPU lacks it.
    fn from_str(value: &str) -> Result<Isa, IsaError> {
        let asked = Self::ALL
            .into_iter()
            .find(|i| i.name() == value.trim().to_ascii_lowercase())
            .ok_or_else(|| IsaError::Unknown {
                value: value.to_string(),
            })?;
        let best = Self::best();
        if asked > best {
            return Err(IsaError::Unsupported { asked, best });
        }
        Ok(asked)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            return if has!("avx512f") {
                Isa::Avx512
            } else {
                Isa::Avx2
            };
        }
    }
    Isa::Scalar
}

/// Whether this CPU runs each 512-bit vector operation as two 256-bit halves: AMD's Zen 4
/// (family 19h, the only AMD family with AVX-512 that does). Its AVX-512 peak is then its
/// AVX2 peak, and some kernels choose by measurement there (see `gemm::Kernel`).
pub fn halves_512() -> bool {
    static HALVES: OnceLock<bool> = OnceLock::new();
    *HALVES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            // Leaves 0 (the vendor) and 1 (the family) exist on every x86-64 CPU.
            let (vendor, version) = (__cpuid(0), __cpuid(1));
            let amd =
                (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
            // Base family 0xf plus the extended family: 0x19 for Zen 3 and Zen 4.
            let family = ((version.eax >> 8) & 0xf) + ((version.eax >> 20) & 0xff);
            amd && family == 0x19 && Isa::best() >= Isa::Avx512
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Run the closure `$f` compiled for the level `$isa`: the portable loops of a kernel
/// (transforms, pooling, epilogues) get the instruction set's vector width and FMA, while
/// the binary itself targets baseline x86-64.
///
/// A macro, not a function, so that each level gets its own copy of the closure, called
/// once, from that level's target-feature function, where the compiler inlines it. A
/// function taking the closure calls one closure from three places, and LLVM kept the
/// larger ones out of line, compiled for baseline x86-64: the Winograd transforms, the
/// pooling and the convolution epilogues ran SSE2 code whatever the level.
macro_rules! compiled_for {
    ($isa:expr, $f:expr) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::model::kernels::Isa::Avx512 => {
                let f = $f;
                // SAFETY: every `Isa` in use is a level this CPU has (`Isa::best`, capped).
                unsafe { $crate::model::kernels::isa::with_avx512(f) }
            }
            #[cfg(target_arch = "x86_64")]
            $crate::model::kernels::Isa::Avx2 => {
                let f = $f;
                // SAFETY: as above.
                unsafe { $crate::model::kernels::isa::with_avx2(f) }
            }
            _ => ($f)(),
        }
    };
}
pub(crate) use compiled_for;

/// `f()` with AVX-512 enabled ([`compiled_for`]).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()` with AVX2 and FMA enabled ([`compiled_for`]).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The CPU's model name, for benchmark reports (`/proc/cpuinfo` on Linux).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| cpuinfo_field(&info, "model name").map(str::to_string))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The value of the first `name : value` line of a /proc/cpuinfo text.
fn cpuinfo_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_unsupported_ones_are_refused() {
        assert_eq!("scalar".parse::<Isa>().unwrap(), Isa::Scalar);
        for isa in Isa::supported() {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        for isa in Isa::ALL.into_iter().filter(|&i| i > Isa::best()) {
            let err = isa.name().parse::<Isa>().unwrap_err().to_string();
            assert!(err.contains("does not have"), "{err}");
        }
        let err = "sse9".parse::<Isa>().unwrap_err().to_string();
        assert!(err.contains("not an instruction set"), "{err}");
    }

    /// CPUID's vendor and family against what Linux reports in /proc/cpuinfo.
    #[test]
    fn halved_512_bit_operations_are_zen_4s() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            eprintln!("no /proc/cpuinfo: the CPUID reading was not checked");
            return;
        };
        let field = |name: &str| cpuinfo_field(&info, name).unwrap_or_default();
        let zen4 = field("vendor_id") == "AuthenticAMD"
            && field("cpu family") == "25"
            && field("flags").split_whitespace().any(|f| f == "avx512f");
        assert_eq!(halves_512(), zen4, "CPUID against /proc/cpuinfo");
        eprintln!("this CPU halves 512-bit operations: {zen4}");
    }
}
