//! Named points where a test may freeze the process, to kill it there: the only way to show
//! that a crash between two steps leaves nothing half done. Off unless the variable
//! `POWERAUTOMATION_FAILPOINT` is `<name>:<file>`; the point named then creates `<file>` and
//! waits for ever (the test kills the process). Read once per process.

use std::{sync::OnceLock, time::Duration};

const VARIABLE: &str = "POWERAUTOMATION_FAILPOINT";

fn armed() -> Option<&'static (String, String)> {
    static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(VARIABLE).ok()?;
            let (name, file) = value.split_once(':')?;
            Some((name.to_owned(), file.to_owned()))
        })
        .as_ref()
}

/// Freezes the calling thread here for ever when the point `name` is armed.
pub(crate) fn reached(name: &str) {
    let Some((armed, file)) = armed() else { return };
    if armed != name {
        return;
    }
    let _ = std::fs::write(file, name);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
