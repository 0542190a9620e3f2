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

/// Resolves an id against the group `base`, as Marathon resolves ids given inside a group
/// (children, dependencies): an absolute id stands as it is, a relative one is taken from
/// `base`, `..` going up a group and `.` staying. Segments follow the id rule.
pub fn resolve_id(raw: &str, base: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if raw.starts_with('/') {
        return normalize_app_id(raw);
    }
    let mut segments: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    let relative = raw.strip_suffix('/').unwrap_or(raw);
    for segment in relative.split('/') {
        match segment {
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(format!("'{raw}' goes above the root group"));
                }
            }
            "" => return Err(format!("'{raw}' contains an empty path segment")),
            label if is_dns_label(label) => segments.push(label),
            label => {
                return Err(format!(
                    "path segment '{label}' must be lowercase letters, digits and '-', \
                     starting and ending with a letter or digit"
                ))
            }
        }
    }
    if segments.is_empty() {
        return Err(format!("'{raw}' names the root group"));
    }
    Ok(absolute_app_id(&segments.join("/")))
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
