//! App ids: their absolute form, and the rule a valid one follows.

/// The absolute form of an app id: the slashes at either end dropped and one put in front
/// (`web` → `/web`, `/prod/web/` → `/prod/web`). Ids named by a request's path take this
/// form as they are; ids in a definition are also validated (`normalize_app_id`).
pub(crate) fn absolute_app_id(raw: &str) -> String {
    format!("/{}", raw.trim_matches('/'))
}

/// Normalizes an app id to its absolute form (`absolute_app_id`), refusing what Marathon
/// refuses: one `/` at either end is optional, and segments are lowercase letters, digits
/// and `-`, starting and ending with a letter or digit; empty and relative segments are
/// refused.
pub fn normalize_app_id(raw: &str) -> Result<String, String> {
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err("must not be empty".into());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() {
            return Err(format!("'{raw}' contains an empty path segment"));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "'{raw}' contains the relative segment '{segment}'; give the absolute id"
            ));
        }
        if !is_dns_label(segment) {
            return Err(format!(
                "path segment '{segment}' must be lowercase letters, digits and '-', \
                 starting and ending with a letter or digit"
            ));
        }
    }
    // No segment is empty, so `trimmed` has no `/` left at either end.
    Ok(absolute_app_id(trimmed))
}

/// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`: Marathon's rule for id segments and port names.
pub(super) fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            inner(first) && inner(last) && bytes.iter().all(|b| inner(b) || *b == b'-')
        }
        _ => false,
    }
}
