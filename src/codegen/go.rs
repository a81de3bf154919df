//! Go output, for the `clients/go` module.

use std::fmt::Write as _;

use super::common::{groups, pascal, typed_columns};
use super::source::{Column, Source};
use crate::proto::{FieldInfo, ParamInfo, ParamType};

fn go_field(kind: &str) -> &'static str {
    match kind {
        "bool" => "bool",
        "int" => "int64",
        "float" => "float64",
        "numeric" => "arcana.Numeric",
        "timestamp" => "time.Time",
        "date" => "arcana.Date",
        "json" => "arcana.JSON",
        "bytes" => "[]byte",
        "uuid" => "arcana.UUID",
        _ => "string",
    }
}

fn go_param(p: &ParamInfo) -> &'static str {
    match ParamType::try_from(p.r#type).unwrap_or(ParamType::Unspecified) {
        ParamType::Int => "int64",
        ParamType::Float => "float64",
        ParamType::Bool => "bool",
        ParamType::Timestamp => "time.Time",
        _ => "string",
    }
}

/// Where a decoder reads a row's fields from.
enum Input {
    /// A view's row, `*arcana.Row`.
    Row,
    /// A mutation's result, `*arcana.MutateResult`.
    Result,
    /// An offline row's `Values`, `map[string]any`.
    Values,
}

/// A struct for a row or a mutation's result, and its decoder: NOT NULL
/// fields are plain values, the others pointers (nil when NULL or absent).
/// With `columns`, each field notes its PostgreSQL type.
fn go_struct(
    body: &mut String,
    ty: &str,
    what: &str,
    input: Input,
    fields: &[&FieldInfo],
    columns: Option<&[Column]>,
) {
    let _ = writeln!(
        body,
        "\n// {what} Pointer fields are nil when NULL or absent; the others are NOT NULL.\ntype {ty} struct {{"
    );
    for f in fields {
        let star = if f.not_null { "" } else { "*" };
        let pg = columns
            .and_then(|cs| cs.iter().find(|c| c.name == f.name))
            .map(|c| format!(" // {}", c.pg_type))
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "\t{} {star}{}{pg}",
            pascal(&f.name),
            go_field(&f.kind)
        );
    }
    body.push_str("}\n");
    let arg = match input {
        Input::Row => "r *arcana.Row",
        Input::Result => "r *arcana.MutateResult",
        Input::Values => "values map[string]any",
    };
    let _ = writeln!(
        body,
        "\n// Decode{ty} reads the fields.\nfunc Decode{ty}({arg}) {ty} {{\n\tvar out {ty}"
    );
    for f in fields {
        let amp = if f.not_null { "" } else { "&" };
        let get = match input {
            Input::Values => format!("values[{:?}]", f.name),
            _ => format!("r.Get({:?})", f.name),
        };
        let _ = writeln!(
            body,
            "\tif v, ok := {get}; ok {{\n\t\tif x, ok := v.({}); ok {{\n\t\t\tout.{} = {amp}x\n\t\t}}\n\t}}",
            go_field(&f.kind),
            pascal(&f.name)
        );
    }
    body.push_str("\treturn out\n}\n");
}

/// Go declarations in package `package`: names, params with their
/// conversion to `arcana.Params`, and row structs with their decoders.
pub fn go(source: &Source, package: &str) -> String {
    let d = &source.describe;
    let mut body = String::new();
    body.push_str("// Graph names.\nconst (\n");
    for g in &d.graphs {
        let _ = writeln!(body, "\tGraph{} = {:?}", pascal(&g.name), g.name);
    }
    body.push_str(")\n\n// Mutation names.\nconst (\n");
    for m in &d.mutations {
        let _ = writeln!(body, "\tMutation{} = {:?}", pascal(&m.name), m.name);
    }
    body.push_str(")\n");
    let params = |body: &mut String, name: &str, owner: &str, ps: &[ParamInfo]| {
        let _ = writeln!(body, "\n// {name} are the params of {owner}. Optional params are pointers.\ntype {name} struct {{");
        for p in ps {
            let star = if p.required { "" } else { "*" };
            let _ = writeln!(
                body,
                "\t{} {star}{}{}",
                pascal(&p.name),
                go_param(p),
                if p.description.is_empty() {
                    String::new()
                } else {
                    format!(" // {}", p.description)
                }
            );
        }
        body.push_str("}\n");
        let _ = writeln!(body, "\n// Params converts to the client's params.\nfunc (p {name}) Params() arcana.Params {{\n\tm := arcana.Params{{}}");
        for p in ps {
            if p.required {
                let _ = writeln!(body, "\tm[{:?}] = p.{}", p.name, pascal(&p.name));
            } else {
                let _ = writeln!(
                    body,
                    "\tif p.{f} != nil {{\n\t\tm[{:?}] = *p.{f}\n\t}}",
                    p.name,
                    f = pascal(&p.name)
                );
            }
        }
        body.push_str("\treturn m\n}\n");
    };
    for g in &d.graphs {
        let base = pascal(&g.name);
        params(
            &mut body,
            &format!("{base}Params"),
            &format!("graph {}", g.name),
            &g.params,
        );
        for (nested, fields) in groups(&g.fields) {
            let ty = format!("{base}{}Row", pascal(&nested));
            let what = if nested.is_empty() {
                format!("graph {}", g.name)
            } else {
                format!("nested ref {nested} of graph {}", g.name)
            };
            go_struct(
                &mut body,
                &ty,
                &format!("{ty} is a row of {what}."),
                Input::Row,
                &fields,
                None,
            );
        }
    }
    for m in &d.mutations {
        let base = pascal(&m.name);
        params(
            &mut body,
            &format!("{base}Params"),
            &format!("mutation {}", m.name),
            &m.params,
        );
        let fields: Vec<&FieldInfo> = m.fields.iter().collect();
        go_struct(
            &mut body,
            &format!("{base}Result"),
            &format!(
                "{base}Result is the row mutation {} returns as its Data (empty when it returns none).",
                m.name
            ),
            Input::Result,
            &fields,
            None,
        );
    }
    tables(&mut body, source);
    let mut out = String::new();
    out.push_str("// Code generated by `arcana codegen --lang go`. DO NOT EDIT.\n\n");
    let _ = writeln!(out, "// Package {package} has typed params and rows for an Arcana server's graphs and mutations.");
    let _ = writeln!(out, "package {package}\n\nimport (");
    if body.contains("time.Time") {
        out.push_str("\t\"time\"\n\n");
    }
    out.push_str("\tarcana \"github.com/arcana-sync/arcana/clients/go\"\n)\n\n");
    out.push_str(&body);
    out
}

/// The tables' and offline tables' structs, when the source has them
/// (built from a config).
fn tables(body: &mut String, source: &Source) {
    if !source.tables.is_empty() {
        body.push_str("\n// Tables the graphs read.\nconst (\n");
        for t in &source.tables {
            let _ = writeln!(body, "\tTable{} = {:?}", pascal(&t.name), t.name);
        }
        body.push_str(")\n");
    }
    for t in &source.tables {
        let (fields, note) = typed_columns(&t.columns);
        let ty = format!("{}TableRow", pascal(&t.name));
        let note = note.map(|n| format!("\n// {n}")).unwrap_or_default();
        go_struct(
            body,
            &ty,
            &format!(
                "{ty} is a row of table {}, every column (from the PostgreSQL catalog).{note}\n//",
                t.name
            ),
            Input::Row,
            &fields.iter().collect::<Vec<_>>(),
            Some(&t.columns),
        );
    }
    if !source.offline.is_empty() {
        body.push_str("\n// Offline tables (the config's [offline] section).\nconst (\n");
        for t in &source.offline {
            let _ = writeln!(body, "\tOffline{} = {:?}", pascal(&t.name), t.name);
        }
        body.push_str(")\n");
    }
    for t in &source.offline {
        let (fields, note) = typed_columns(&t.columns);
        let ty = format!("{}OfflineRow", pascal(&t.name));
        let note = note.map(|n| format!("\n// {n}")).unwrap_or_default();
        go_struct(
            body,
            &ty,
            &format!(
                "{ty} holds the Values of an offline.Row of table {} (key: {}).{note}\n//",
                t.name,
                t.key.join(", ")
            ),
            Input::Values,
            &fields.iter().collect::<Vec<_>>(),
            Some(&t.columns),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DescribeResponse;

    #[test]
    fn go_fields_are_pointers_only_when_nullable() {
        let field = |name: &str, kind: &str, not_null| FieldInfo {
            nested: String::new(),
            name: name.into(),
            kind: kind.into(),
            not_null,
        };
        let d = DescribeResponse {
            graphs: vec![crate::proto::GraphInfo {
                name: "things".into(),
                fields: vec![field("id", "int", true), field("size", "int", false)],
                ..Default::default()
            }],
            mutations: vec![
                crate::proto::MutationInfo {
                    name: "make_thing".into(),
                    fields: vec![
                        field("id", "int", true),
                        field("made_at", "timestamp", false),
                    ],
                    ..Default::default()
                },
                crate::proto::MutationInfo {
                    name: "drop_thing".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let code = go(&d.into(), "things");
        assert!(
            code.contains("type ThingsRow struct {\n\tID int64\n\tSize *int64\n}"),
            "{code}"
        );
        assert!(code.contains("\t\t\tout.ID = x\n"), "{code}");
        assert!(code.contains("\t\t\tout.Size = &x\n"), "{code}");
        assert!(
            code.contains("type MakeThingResult struct {\n\tID int64\n\tMadeAt *time.Time\n}"),
            "{code}"
        );
        assert!(
            code.contains("func DecodeMakeThingResult(r *arcana.MutateResult) MakeThingResult {"),
            "{code}"
        );
        assert!(code.contains("type DropThingResult struct {\n}"), "{code}");
        assert!(code.contains("\t\"time\"\n"), "{code}");
    }
}
