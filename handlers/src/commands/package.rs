//! `jitr package`: the Lambda deployment package — a `jitr` binary built with
//! `--features aws`, as `bootstrap` (mode 755) in a zip, for the `provided.al2023`
//! runtime — and the commands that deploy it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The glibc of Lambda's `provided.al2023` runtime (Amazon Linux 2023).
pub const AL2023_GLIBC_MINOR: u32 = 34;

/// A Lambda function architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LambdaArch {
    /// Graviton (the template's default).
    Arm64,
    /// x86-64.
    #[value(name = "x86_64")]
    X86_64,
}

impl LambdaArch {
    /// The name Lambda and the template use.
    pub fn as_str(self) -> &'static str {
        match self {
            LambdaArch::Arm64 => "arm64",
            LambdaArch::X86_64 => "x86_64",
        }
    }

    /// The ELF `e_machine` of its executables.
    fn elf_machine(self) -> u16 {
        match self {
            LambdaArch::Arm64 => 0xB7,
            LambdaArch::X86_64 => 0x3E,
        }
    }
}

/// What a binary is, from its ELF header.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfFacts {
    /// `e_machine`.
    pub machine: u16,
    /// The newest `GLIBC_2.N` symbol version it names (None: static, or none).
    pub glibc_minor: Option<u32>,
}

/// Why a file cannot be a Lambda `bootstrap`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackageError {
    /// Not a 64-bit little-endian ELF executable.
    #[error("not a 64-bit little-endian ELF executable")]
    NotElf,
    /// Built for another architecture.
    #[error("built for {found}, not {wanted}")]
    WrongArchitecture {
        /// The binary's.
        found: String,
        /// The one asked for.
        wanted: &'static str,
    },
    /// Needs a newer glibc than the runtime has.
    #[error(
        "needs glibc 2.{needed} but provided.al2023 has 2.{AL2023_GLIBC_MINOR}: build it against an older glibc (e.g. `cargo zigbuild --target <triple>.2.{AL2023_GLIBC_MINOR}`, see docs/deploy.md)"
    )]
    GlibcTooNew {
        /// The newest version it names.
        needed: u32,
    },
    /// Too large for a zip without ZIP64 (Lambda takes far less anyway).
    #[error("{0} bytes: too large for a Lambda package")]
    TooLarge(usize),
}

fn machine_name(machine: u16) -> String {
    match machine {
        0x3E => "x86_64".into(),
        0xB7 => "arm64".into(),
        other => format!("ELF machine {other:#x}"),
    }
}

/// Reads the ELF header of `binary` and the glibc symbol versions it names.
pub fn elf_facts(binary: &[u8]) -> Result<ElfFacts, PackageError> {
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian); e_type 2 or 3.
    if binary.len() < 20 || binary[..4] != *b"\x7fELF" || binary[4] != 2 || binary[5] != 1 {
        return Err(PackageError::NotElf);
    }
    let e_type = u16::from_le_bytes([binary[16], binary[17]]);
    if !matches!(e_type, 2 | 3) {
        return Err(PackageError::NotElf);
    }
    let machine = u16::from_le_bytes([binary[18], binary[19]]);
    let needle = b"GLIBC_2.";
    let glibc_minor = binary
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .filter_map(|(i, _)| {
            let digits: Vec<u8> = binary[i + needle.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            std::str::from_utf8(&digits).ok()?.parse::<u32>().ok()
        })
        .max();
    Ok(ElfFacts {
        machine,
        glibc_minor,
    })
}

/// Checks that `binary` can be the `bootstrap` of a `provided.al2023`
/// function of `arch`.
pub fn check_bootstrap(binary: &[u8], arch: LambdaArch) -> Result<ElfFacts, PackageError> {
    let facts = elf_facts(binary)?;
    if facts.machine != arch.elf_machine() {
        return Err(PackageError::WrongArchitecture {
            found: machine_name(facts.machine),
            wanted: arch.as_str(),
        });
    }
    if let Some(needed) = facts.glibc_minor.filter(|n| *n > AL2023_GLIBC_MINOR) {
        return Err(PackageError::GlibcTooNew { needed });
    }
    Ok(facts)
}

/// A zip (PKWARE APPNOTE 6.3) holding one file, `name`, deflated, with Unix
/// `mode`; a fixed timestamp (1980-01-01), so that the same binary gives the
/// same package.
pub fn zip_one(name: &str, mode: u32, data: &[u8]) -> Result<Vec<u8>, PackageError> {
    let too_large = |n: usize| u32::try_from(n).map_err(|_| PackageError::TooLarge(n));
    let mut deflater =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflater
        .write_all(data)
        .and_then(|_| deflater.try_finish())
        .expect("deflating into memory");
    let compressed = deflater.finish().expect("deflating into memory");
    let crc = crc32fast::hash(data);
    let (size, packed) = (too_large(data.len())?, too_large(compressed.len())?);
    let name_len = u16::try_from(name.len()).expect("a short name");
    let (time, date) = (0u16, (1 << 5) | 1u16); // 00:00:00, 1980-01-01
    let mut out = Vec::with_capacity(compressed.len() + 128);
    let common = |out: &mut Vec<u8>| {
        out.extend(20u16.to_le_bytes()); // version needed: 2.0 (deflate)
        out.extend(0u16.to_le_bytes()); // flags
        out.extend(8u16.to_le_bytes()); // method: deflate
        out.extend(time.to_le_bytes());
        out.extend(date.to_le_bytes());
        out.extend(crc.to_le_bytes());
        out.extend(packed.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(name_len.to_le_bytes());
        out.extend(0u16.to_le_bytes()); // extra field length
    };
    out.extend(0x0403_4b50u32.to_le_bytes());
    common(&mut out);
    out.extend(name.as_bytes());
    out.extend(&compressed);
    let directory = too_large(out.len())?;
    out.extend(0x0201_4b50u32.to_le_bytes());
    out.extend(((3u16 << 8) | 20).to_le_bytes()); // made by: Unix, 2.0
    common(&mut out);
    out.extend(0u16.to_le_bytes()); // comment length
    out.extend(0u16.to_le_bytes()); // disk number
    out.extend(0u16.to_le_bytes()); // internal attributes
    out.extend(((0o100_000 | mode) << 16).to_le_bytes()); // external: regular file, mode
    out.extend(0u32.to_le_bytes()); // local header offset
    out.extend(name.as_bytes());
    let directory_size = too_large(out.len())? - directory;
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // this disk
    out.extend(0u16.to_le_bytes()); // the directory's disk
    out.extend(1u16.to_le_bytes()); // entries here
    out.extend(1u16.to_le_bytes()); // entries in all
    out.extend(directory_size.to_le_bytes());
    out.extend(directory.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // comment length
    Ok(out)
}

/// `jitr package` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The `jitr` binary to package, built with `--features aws` for the
    /// architecture (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// The functions' architecture.
    #[arg(long, value_enum, default_value = "arm64")]
    arch: LambdaArch,
    /// Where to write the zip.
    #[arg(long, default_value = "jitr-lambda.zip")]
    out: PathBuf,
    /// The deployment's prefix, for the printed deploy commands.
    #[arg(long, env = "JITR_PREFIX", default_value = "jitr")]
    prefix: String,
}

/// Writes the package and prints how to deploy it.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let binary = match &args.binary {
        Some(path) => path.clone(),
        // This binary: a package of a build without AWS support would not run.
        #[cfg(not(feature = "aws"))]
        None => return Err(super::without_aws()),
        #[cfg(feature = "aws")]
        None => std::env::current_exe().context("finding this jitr binary")?,
    };
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let facts = match check_bootstrap(&bytes, args.arch) {
        Ok(facts) => facts,
        Err(e) => bail!("{}: {e}", binary.display()),
    };
    let zip = zip_one("bootstrap", 0o755, &bytes)?;
    std::fs::write(&args.out, &zip).with_context(|| format!("writing {}", args.out.display()))?;
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&zip));
    let key = format!(
        "jitr/jitr-lambda-{}-{}.zip",
        args.arch.as_str(),
        &digest[..12]
    );
    let out = args.out.display();
    println!(
        "wrote {out}: bootstrap = {} ({} for {}, glibc symbols up to 2.{}), {:.1} MB zipped, SHA-256 {digest}",
        binary.display(),
        machine_name(facts.machine),
        args.arch.as_str(),
        facts.glibc_minor.unwrap_or(0),
        zip.len() as f64 / 1e6
    );
    println!("deploy it (see docs/deploy.md):");
    println!("  aws s3 cp {out} s3://<bucket>/{key}");
    println!(
        "  aws cloudformation deploy --template-file infra/deploy/template.yaml \\\n    \
         --stack-name {prefix} --capabilities CAPABILITY_NAMED_IAM \\\n    \
         --parameter-overrides Prefix={prefix} Architecture={arch} CodeBucket=<bucket> CodeKey={key} \\\n      \
         GitHubAppId=<app id> VpcId=<vpc> Subnets=<subnet,subnet> AlarmEmail=<address>",
        prefix = args.prefix,
        arch = args.arch.as_str(),
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(machine: u16) -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
        elf.resize(16, 0);
        elf.extend(3u16.to_le_bytes());
        elf.extend(machine.to_le_bytes());
        elf.resize(64, 0);
        elf
    }

    #[test]
    fn a_bootstrap_must_be_an_elf_of_the_functions_architecture_and_glibc() {
        let mut arm = header(0xB7);
        arm.extend(b"\0GLIBC_2.17\0GLIBC_2.34\0");
        assert_eq!(
            check_bootstrap(&arm, LambdaArch::Arm64),
            Ok(ElfFacts {
                machine: 0xB7,
                glibc_minor: Some(34)
            })
        );
        assert_eq!(
            check_bootstrap(&arm, LambdaArch::X86_64),
            Err(PackageError::WrongArchitecture {
                found: "arm64".into(),
                wanted: "x86_64"
            })
        );
        let mut newer = header(0x3E);
        newer.extend(b"\0GLIBC_2.39\0");
        assert_eq!(
            check_bootstrap(&newer, LambdaArch::X86_64),
            Err(PackageError::GlibcTooNew { needed: 39 })
        );
        assert_eq!(
            check_bootstrap(b"#!/bin/sh\n", LambdaArch::X86_64),
            Err(PackageError::NotElf)
        );
    }
}
