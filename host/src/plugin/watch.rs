//! What triggers a hot swap besides the API: changes to the plugin file (debounced) and SIGHUP.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify_debouncer_mini::{new_debouncer, notify::RecursiveMode, DebounceEventResult};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::slot::PluginSlot;

/// How long the file must be quiet before a reload: long enough for a linker to finish writing.
const DEBOUNCE: Duration = Duration::from_millis(400);

/// Watches the slot's configured path and reloads when the file's content changes. The
/// returned guard stops the watcher when dropped.
pub fn watch_file(slot: Arc<PluginSlot>) -> Result<impl Drop, String> {
    let configured = slot.config.path.clone();
    let (directory, file) = if configured.is_dir() {
        (
            configured.clone(),
            configured.join(format!("lib{}.so", slot.name)),
        )
    } else {
        let parent = configured
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        (parent, configured.clone())
    };
    let (sender, mut receiver) = mpsc::channel::<()>(1);
    let target = file.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, move |result: DebounceEventResult| {
        if let Ok(events) = result {
            let touched = events.iter().any(|event| {
                event.path == target
                    || event.path.file_name() == target.file_name()
                        && event.path.parent() == target.parent()
            });
            if touched {
                // A reload is already queued when the channel is full: that one sees this change.
                let _ = sender.try_send(());
            }
        }
    })
    .map_err(|error| format!("cannot watch {}: {error}", directory.display()))?;
    debouncer
        .watcher()
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(|error| format!("cannot watch {}: {error}", directory.display()))?;
    tracing::info!(plugin = %slot.name, directory = %directory.display(), "watching the plugin file for changes");
    tokio::spawn(async move {
        while receiver.recv().await.is_some() {
            let path = file.clone();
            let digest = tokio::task::spawn_blocking(move || {
                std::fs::read(&path).map(|bytes| hex::encode(Sha256::digest(&bytes)))
            })
            .await;
            let Ok(Ok(digest)) = digest else { continue };
            if slot.status().sha256.as_deref() == Some(digest.as_str()) {
                continue;
            }
            let _ = slot.reload("file change").await;
        }
    });
    Ok(debouncer)
}

/// Reloads every enabled plugin on SIGHUP.
pub fn reload_on_sighup(slots: Vec<Arc<PluginSlot>>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups =
        signal(SignalKind::hangup()).map_err(|error| format!("cannot handle SIGHUP: {error}"))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading plugins");
            for slot in slots.iter().filter(|slot| slot.is_enabled()) {
                let _ = slot.reload("SIGHUP").await;
            }
        }
    });
    Ok(())
}
