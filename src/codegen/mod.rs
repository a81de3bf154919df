//! `arcana codegen`: typed params and rows for every graph and mutation,
//! row types for the tables the graphs read and for the offline tables, in
//! TypeScript, Go or Swift.
//!
//! Every language generates from one [`Source`]: a server's Describe
//! response (`--server`), or the same Describe built in-process from a
//! config against its database ([`from_config`]), which adds the tables'
//! columns from the PostgreSQL catalog.

mod common;
mod go;
mod source;
mod swift;
mod ts;

pub use go::go;
pub use source::{from_config, Column, OfflineTable, Source, TableType};
pub use swift::swift;
pub use ts::typescript;

/// A target language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// TypeScript, for `@arcana/client`.
    Ts,
    /// Go, for the `clients/go` module.
    Go,
    /// Swift, for the `clients/swift` package.
    Swift,
}

impl Lang {
    /// `ts`, `go` or `swift`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "ts" => Some(Lang::Ts),
            "go" => Some(Lang::Go),
            "swift" => Some(Lang::Swift),
            _ => None,
        }
    }
}

/// The code for `lang`; `package` names the Go package (other languages
/// ignore it).
pub fn generate(lang: Lang, source: &Source, package: &str) -> String {
    match lang {
        Lang::Ts => typescript(source),
        Lang::Go => go(source, package),
        Lang::Swift => swift(source),
    }
}
