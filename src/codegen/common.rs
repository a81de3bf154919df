//! What the generators share: idiomatic names, a graph's fields grouped
//! by nested ref, and the typed columns of a table.

use super::source::Column;
use crate::proto::FieldInfo;

/// `project_tasks` → `ProjectTasks`; well-known initialisms stay upper case
/// (`assignee_id` → `AssigneeID`), as Go and Swift style want.
pub(super) fn pascal(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(|p| {
            let lower = p.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "id" | "url" | "uuid" | "json" | "api" | "http" | "sql"
            ) {
                return lower.to_ascii_uppercase();
            }
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// A graph's fields grouped by nested ref (`""`: the row itself), in
/// first-seen order.
pub(super) fn groups(fields: &[FieldInfo]) -> Vec<(String, Vec<&FieldInfo>)> {
    let mut out: Vec<(String, Vec<&FieldInfo>)> = Vec::new();
    for f in fields {
        match out.iter_mut().find(|(n, _)| *n == f.nested) {
            Some((_, v)) => v.push(f),
            None => out.push((f.nested.clone(), vec![f])),
        }
    }
    out
}

/// The columns a language can type, as fields, and a note naming the
/// others (types no Value kind carries), so the output says what it left
/// out instead of guessing.
pub(super) fn typed_columns(columns: &[Column]) -> (Vec<FieldInfo>, Option<String>) {
    let fields = columns
        .iter()
        .filter(|c| !c.kind.is_empty())
        .map(Column::field)
        .collect();
    let skipped: Vec<String> = columns
        .iter()
        .filter(|c| c.kind.is_empty())
        .map(|c| format!("{} ({})", c.name, c.pg_type))
        .collect();
    let note = (!skipped.is_empty()).then(|| {
        format!(
            "Not typed (no Value kind carries their type): {}.",
            skipped.join(", ")
        )
    });
    (fields, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_idiomatic() {
        assert_eq!(pascal("project_tasks"), "ProjectTasks");
        assert_eq!(pascal("assignee_id"), "AssigneeID");
        assert_eq!(pascal("public.audit_log"), "PublicAuditLog");
    }
}
