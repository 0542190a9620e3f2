//! Embeds every file of `src/ui` in the binary: the web UI's assets are whatever that
//! directory holds, so adding a script or a stylesheet needs no change to the server.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ui");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut table = String::from("&[\n");
    for name in &names {
        let path = dir.join(name);
        // Written as Rust string literals through Debug, which escapes what needs escaping.
        let _ = writeln!(
            table,
            "    ({name:?}, include_str!({path:?})),",
            path = path.display().to_string()
        );
    }
    table.push(']');
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    std::fs::write(Path::new(&out).join("ui_assets.rs"), table)
        .expect("the build script can write to OUT_DIR");
}
