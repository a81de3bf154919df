//! Swift output, for the `clients/swift` package: params as structs that
//! build `ArcanaParams`, rows as `Codable`, `Sendable` structs read from a
//! view's `Row`, a `MutateResult` or a field map of `ArcanaValue`s.

use std::fmt::Write as _;

use super::common::{groups, pascal, typed_columns};
use super::source::{Column, Source};
use crate::proto::{FieldInfo, ParamInfo, ParamType};

/// Swift's reserved words, escaped with backticks where a name is one.
const KEYWORDS: &[&str] = &[
    "Any",
    "Self",
    "Type",
    "as",
    "associatedtype",
    "break",
    "case",
    "catch",
    "class",
    "continue",
    "default",
    "defer",
    "deinit",
    "do",
    "else",
    "enum",
    "extension",
    "fallthrough",
    "false",
    "fileprivate",
    "for",
    "func",
    "guard",
    "if",
    "import",
    "in",
    "init",
    "inout",
    "internal",
    "is",
    "let",
    "nil",
    "open",
    "operator",
    "private",
    "protocol",
    "public",
    "repeat",
    "rethrows",
    "return",
    "self",
    "static",
    "struct",
    "subscript",
    "super",
    "switch",
    "throw",
    "throws",
    "true",
    "try",
    "typealias",
    "var",
    "where",
    "while",
];

/// `due_at` → `dueAt`, `project_id` → `projectID`, `default` → `` `default` ``.
fn camel(name: &str) -> String {
    let parts: Vec<&str> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .collect();
    let mut out = match parts.split_first() {
        Some((first, rest)) => {
            // An all-caps first word is lowered whole (`ID` → `id`), any
            // other only at its first letter (`createdAt` stays).
            let head = if first.chars().any(|c| c.is_ascii_lowercase()) {
                let mut c = first.chars();
                c.next()
                    .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                    .unwrap_or_default()
            } else {
                first.to_ascii_lowercase()
            };
            head + &rest.iter().map(|p| pascal(p)).collect::<String>()
        }
        None => "_".to_owned(),
    };
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if KEYWORDS.contains(&out.as_str()) {
        format!("`{out}`")
    } else {
        out
    }
}

/// The Swift type of a Value kind, and the decoding helper reading it.
fn field_type(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "bool" => ("Bool", "bool"),
        "int" => ("Int64", "int"),
        "float" => ("Double", "float"),
        "numeric" => ("String", "numeric"),
        "timestamp" => ("Date", "timestamp"),
        "date" => ("String", "date"),
        "json" => ("String", "json"),
        "bytes" => ("Data", "bytes"),
        "uuid" => ("String", "uuid"),
        _ => ("String", "string"),
    }
}

/// A param's Swift type and the `ArcanaValue` case it is sent as.
fn param_type(p: &ParamInfo) -> (&'static str, &'static str) {
    match ParamType::try_from(p.r#type).unwrap_or(ParamType::Unspecified) {
        ParamType::Int => ("Int64", "int"),
        ParamType::Float => ("Double", "float"),
        ParamType::Bool => ("Bool", "bool"),
        ParamType::Timestamp => ("Date", "timestamp"),
        ParamType::Uuid => ("String", "uuid"),
        _ => ("String", "string"),
    }
}

fn doc(out: &mut String, indent: &str, text: &str) {
    if !text.is_empty() {
        let _ = writeln!(out, "{indent}/// {text}");
    }
}

/// A params struct: required params plain, optional ones `nil` by default
/// and left out of the params when `nil`.
fn params(out: &mut String, name: &str, description: &str, ps: &[ParamInfo]) {
    out.push('\n');
    doc(out, "", description);
    let _ = writeln!(out, "public struct {name}: Sendable, Hashable {{");
    for p in ps {
        let mut text = p.description.clone();
        let allowed: Vec<String> = p
            .one_of
            .iter()
            .filter_map(|v| match &v.kind {
                Some(crate::proto::value::Kind::String(s)) => Some(format!("`{s}`")),
                Some(crate::proto::value::Kind::Int(i)) => Some(format!("`{i}`")),
                _ => None,
            })
            .collect();
        if !allowed.is_empty() {
            let _ = write!(
                text,
                "{}One of {}.",
                if text.is_empty() { "" } else { " " },
                allowed.join(", ")
            );
        }
        doc(out, "  ", &text);
        let opt = if p.required { "" } else { "?" };
        let _ = writeln!(
            out,
            "  public var {}: {}{opt}",
            camel(&p.name),
            param_type(p).0
        );
    }
    // Required params first, so a call may leave out every optional one.
    let mut ordered: Vec<&ParamInfo> = ps.iter().filter(|p| p.required).collect();
    ordered.extend(ps.iter().filter(|p| !p.required));
    let args: Vec<String> = ordered
        .iter()
        .map(|p| {
            let default = if p.required { "" } else { "? = nil" };
            format!("{}: {}{default}", camel(&p.name), param_type(p).0)
        })
        .collect();
    if ps.is_empty() {
        out.push_str("  public init() {}\n\n  /// The params as the client sends them.\n  public var params: ArcanaParams { [:] }\n}\n");
        return;
    }
    let _ = writeln!(out, "\n  public init({}) {{", args.join(", "));
    for p in ps {
        let _ = writeln!(out, "    self.{0} = {0}", camel(&p.name));
    }
    out.push_str("  }\n\n  /// The params as the client sends them.\n  public var params: ArcanaParams {\n    var p: ArcanaParams = [:]\n");
    for p in ps {
        let (_, case) = param_type(p);
        if p.required {
            let _ = writeln!(out, "    p[{:?}] = .{case}({})", p.name, camel(&p.name));
        } else {
            let _ = writeln!(
                out,
                "    if let v = {} {{ p[{:?}] = .{case}(v) }}",
                camel(&p.name),
                p.name
            );
        }
    }
    out.push_str("    return p\n  }\n}\n");
}

/// What a row struct can be read from, beyond a field map.
enum Input {
    /// A view's `Row`.
    Row,
    /// A `MutateResult`'s `data`.
    Result,
    /// Only a field map (offline rows).
    Values,
}

/// A row struct: NOT NULL fields plain, the others optional; `Codable`
/// under the server's field names. With `columns`, each field notes its
/// PostgreSQL type.
fn row(
    out: &mut String,
    name: &str,
    what: &str,
    fields: &[&FieldInfo],
    input: Input,
    columns: Option<&[Column]>,
) {
    let _ = writeln!(
        out,
        "\n/// {what} Optional fields are nil when NULL or absent; the others are NOT NULL."
    );
    let _ = writeln!(out, "public struct {name}: Codable, Sendable, Hashable {{");
    for f in fields {
        let opt = if f.not_null { "" } else { "?" };
        let pg = columns
            .and_then(|cs| cs.iter().find(|c| c.name == f.name))
            .map(|c| format!("  // {}", c.pg_type))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  public var {}: {}{opt}{pg}",
            camel(&f.name),
            field_type(&f.kind).0
        );
    }
    if !fields.is_empty() {
        out.push_str("\n  enum CodingKeys: String, CodingKey {\n");
        for f in fields {
            let case = camel(&f.name);
            if case == f.name {
                let _ = writeln!(out, "    case {case}");
            } else {
                let _ = writeln!(out, "    case {case} = {:?}", f.name);
            }
        }
        out.push_str("  }\n");
    }
    let args: Vec<String> = fields
        .iter()
        .map(|f| {
            let opt = if f.not_null { "" } else { "? = nil" };
            format!("{}: {}{opt}", camel(&f.name), field_type(&f.kind).0)
        })
        .collect();
    if fields.is_empty() {
        out.push_str("  public init() {}\n");
    } else {
        let _ = writeln!(out, "\n  public init({}) {{", args.join(", "));
        for f in fields {
            let _ = writeln!(out, "    self.{0} = {0}", camel(&f.name));
        }
        out.push_str("  }\n");
    }
    out.push_str(
        "\n  /// Reads the fields; nil when a NOT NULL field is missing or of another kind.\n",
    );
    out.push_str("  public init?(fields get: (String) -> ArcanaValue?) {\n");
    let required: Vec<&&FieldInfo> = fields.iter().filter(|f| f.not_null).collect();
    if !required.is_empty() {
        let binds: Vec<String> = required
            .iter()
            .map(|f| {
                format!(
                    "let {} = FieldValue.{}(get({:?}))",
                    camel(&f.name),
                    field_type(&f.kind).1,
                    f.name
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "    guard {} else {{ return nil }}",
            binds.join(",\n      ")
        );
    }
    for f in fields {
        if f.not_null {
            let _ = writeln!(out, "    self.{0} = {0}", camel(&f.name));
        } else {
            let _ = writeln!(
                out,
                "    self.{} = FieldValue.{}(get({:?}))",
                camel(&f.name),
                field_type(&f.kind).1,
                f.name
            );
        }
    }
    out.push_str("  }\n\n  /// Reads a field map, e.g. an offline row's values.\n  public init?(values: [String: ArcanaValue]) {\n    self.init(fields: { values[$0] })\n  }\n");
    match input {
        Input::Row => out.push_str(
            "\n  /// Reads a view's row.\n  public init?(_ row: Row) {\n    self.init(fields: { row[$0] })\n  }\n",
        ),
        Input::Result => out.push_str(
            "\n  /// Reads what a mutation returned.\n  public init?(_ result: MutateResult) {\n    self.init(fields: { result.data[$0] })\n  }\n",
        ),
        Input::Values => {}
    }
    out.push_str("}\n");
}

/// A namespace of name constants.
fn names<'a>(out: &mut String, doc_text: &str, ty: &str, names: impl Iterator<Item = &'a String>) {
    let _ = writeln!(out, "\n/// {doc_text}\npublic enum {ty} {{");
    for n in names {
        let _ = writeln!(out, "  public static let {} = {n:?}", camel(n));
    }
    out.push_str("}\n");
}

/// Swift declarations for a module that imports the `Arcana` package.
pub fn swift(source: &Source) -> String {
    let d = &source.describe;
    let mut out = String::new();
    out.push_str("// Generated by `arcana codegen --lang swift`. Do not edit.\n\nimport Arcana\nimport Foundation\n");
    names(
        &mut out,
        "Graph names.",
        "GraphName",
        d.graphs.iter().map(|g| &g.name),
    );
    names(
        &mut out,
        "Mutation names.",
        "MutationName",
        d.mutations.iter().map(|m| &m.name),
    );
    for g in &d.graphs {
        let base = pascal(&g.name);
        let table = if g.table.is_empty() {
            String::new()
        } else {
            format!(" (table `{}`)", g.table)
        };
        let _ = writeln!(out, "\n// MARK: Graph `{}`{table}", g.name);
        params(
            &mut out,
            &format!("{base}Params"),
            &g.description,
            &g.params,
        );
        for (nested, fields) in groups(&g.fields) {
            let what = if nested.is_empty() {
                format!("A row of graph `{}`.", g.name)
            } else {
                format!("A row of nested ref `{nested}` of graph `{}`.", g.name)
            };
            let name = format!("{base}{}Row", pascal(&nested));
            row(&mut out, &name, &what, &fields, Input::Row, None);
        }
    }
    for m in &d.mutations {
        let base = pascal(&m.name);
        let _ = writeln!(out, "\n// MARK: Mutation `{}`", m.name);
        params(
            &mut out,
            &format!("{base}Params"),
            &m.description,
            &m.params,
        );
        let fields: Vec<&FieldInfo> = m.fields.iter().collect();
        row(
            &mut out,
            &format!("{base}Result"),
            &format!(
                "What `{}` returns as its data (no fields when it returns no row).",
                m.name
            ),
            &fields,
            Input::Result,
            None,
        );
    }
    if !source.tables.is_empty() {
        out.push_str(
            "\n// MARK: Tables the graphs read, every column (from the PostgreSQL catalog)\n",
        );
        names(
            &mut out,
            "Table names.",
            "TableName",
            source.tables.iter().map(|t| &t.name),
        );
    }
    for t in &source.tables {
        let (fields, note) = typed_columns(&t.columns);
        let what = format!(
            "A row of table `{}`.{}",
            t.name,
            note.map(|n| format!(" {n}")).unwrap_or_default()
        );
        let name = format!("{}TableRow", pascal(&t.name));
        row(
            &mut out,
            &name,
            &what,
            &fields.iter().collect::<Vec<_>>(),
            Input::Row,
            Some(&t.columns),
        );
    }
    if !source.offline.is_empty() {
        out.push_str("\n// MARK: Offline tables (the config's [offline] section)\n");
        names(
            &mut out,
            "Offline table names.",
            "OfflineTableName",
            source.offline.iter().map(|t| &t.name),
        );
        out.push_str("\n/// The key columns of each offline table.\npublic let offlineTableKeys: [String: [String]] = [\n");
        for t in &source.offline {
            let key: Vec<String> = t.key.iter().map(|k| format!("{k:?}")).collect();
            let _ = writeln!(out, "  {:?}: [{}],", t.name, key.join(", "));
        }
        out.push_str("]\n");
    }
    for t in &source.offline {
        let (fields, note) = typed_columns(&t.columns);
        let what = format!(
            "The values of an offline row of table `{}` (key: {}).{}",
            t.name,
            t.key.join(", "),
            note.map(|n| format!(" {n}")).unwrap_or_default()
        );
        let name = format!("{}OfflineRow", pascal(&t.name));
        row(
            &mut out,
            &name,
            &what,
            &fields.iter().collect::<Vec<_>>(),
            Input::Values,
            Some(&t.columns),
        );
    }
    out.push_str(FIELD_VALUE);
    out
}

/// Reads one kind out of an `ArcanaValue`; private to the generated file.
const FIELD_VALUE: &str = r#"
/// Reads one kind of value; nil for NULL, an absent field or another kind.
private enum FieldValue {
  static func bool(_ v: ArcanaValue?) -> Bool? { if case .bool(let x)? = v { return x }; return nil }
  static func int(_ v: ArcanaValue?) -> Int64? { if case .int(let x)? = v { return x }; return nil }
  static func float(_ v: ArcanaValue?) -> Double? { if case .float(let x)? = v { return x }; return nil }
  static func string(_ v: ArcanaValue?) -> String? { if case .string(let x)? = v { return x }; return nil }
  static func numeric(_ v: ArcanaValue?) -> String? { if case .numeric(let x)? = v { return x }; return nil }
  static func timestamp(_ v: ArcanaValue?) -> Date? { if case .timestamp(let x)? = v { return x }; return nil }
  static func date(_ v: ArcanaValue?) -> String? { if case .date(let x)? = v { return x }; return nil }
  static func json(_ v: ArcanaValue?) -> String? { if case .json(let x)? = v { return x }; return nil }
  static func bytes(_ v: ArcanaValue?) -> Data? { if case .bytes(let x)? = v { return x }; return nil }
  static func uuid(_ v: ArcanaValue?) -> String? { if case .uuid(let x)? = v { return x }; return nil }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_result_and_keyword_names_stay_valid_swift() {
        use crate::proto::{DescribeResponse, MutationInfo};
        let d = DescribeResponse {
            mutations: vec![
                MutationInfo {
                    name: "drop_thing".into(),
                    params: vec![ParamInfo {
                        name: "default".into(),
                        r#type: ParamType::Bool as i32,
                        required: true,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                MutationInfo {
                    name: "make_thing".into(),
                    fields: vec![FieldInfo {
                        nested: String::new(),
                        name: "class".into(),
                        kind: "bytes".into(),
                        not_null: false,
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let code = swift(&d.into());
        assert!(
            code.contains("public struct DropThingResult: Codable, Sendable, Hashable {\n  public init() {}\n"),
            "{code}"
        );
        assert!(code.contains("  public var `default`: Bool\n"), "{code}");
        assert!(
            code.contains("    p[\"default\"] = .bool(`default`)\n"),
            "{code}"
        );
        assert!(code.contains("  public var `class`: Data?\n"), "{code}");
        assert!(code.contains("    case `class` = \"class\"\n"), "{code}");
        assert!(
            code.contains("    self.`class` = FieldValue.bytes(get(\"class\"))\n"),
            "{code}"
        );
    }

    #[test]
    fn swift_names_are_lower_camel_and_escaped() {
        assert_eq!(camel("due_at"), "dueAt");
        assert_eq!(camel("project_id"), "projectID");
        assert_eq!(camel("id"), "id");
        assert_eq!(camel("default"), "`default`");
        assert_eq!(camel("2fa"), "_2fa");
    }
}
