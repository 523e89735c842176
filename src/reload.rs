//! What starts a reload: `SIGHUP`, or a change of the configuration file on disk. Either loads
//! the configuration again from where it came from and hands it to the running app, which
//! validates it in full and swaps it in, or keeps the one in force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::config::{Config, ConfigError};

/// Editors and Kubernetes write a file in several steps (truncate, write, rename, swap a
/// symlink); one reload after the burst has settled sees the finished file.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Hangup,
    FileChanged,
}

pub type Reloads = UnboundedReceiver<Result<Config, ConfigError>>;

/// Reloads on `SIGHUP` and, when the configuration came from a file, on every change of it.
///
/// Credential files are not watched: every token fetch reads them again, so a rotated secret or
/// certificate is used at the next refresh without a reload.
pub fn triggers(file: Option<PathBuf>) -> Reloads {
    let (loaded, reloads) = unbounded_channel();
    let (wake, woken) = unbounded_channel::<Cause>();
    #[cfg(unix)]
    {
        let wake = wake.clone();
        tokio::spawn(async move {
            let kind = tokio::signal::unix::SignalKind::hangup();
            let Ok(mut hangups) = tokio::signal::unix::signal(kind) else {
                return;
            };
            while hangups.recv().await.is_some() {
                if wake.send(Cause::Hangup).is_err() {
                    return;
                }
            }
        });
    }
    let watcher = file.as_deref().and_then(|file| watch(file, wake));
    tokio::spawn(load_on_wake(file, woken, loaded, watcher));
    reloads
}

async fn load_on_wake(
    file: Option<PathBuf>,
    mut woken: UnboundedReceiver<Cause>,
    loaded: UnboundedSender<Result<Config, ConfigError>>,
    // Held here: dropping the watcher stops it.
    _watcher: Option<notify::RecommendedWatcher>,
) {
    while let Some(cause) = woken.recv().await {
        if cause == Cause::FileChanged {
            tokio::time::sleep(SETTLE).await;
        }
        // One load for the whole burst.
        while woken.try_recv().is_ok() {}
        tracing::info!(?cause, "loading the configuration again");
        if loaded.send(Config::load(file.as_deref())).is_err() {
            return;
        }
    }
}

/// Watches the file's directory, not the file: an editor's rename or Kubernetes' swap of the
/// `..data` symlink replaces the file, and a watch on the old one would see nothing more.
fn watch(file: &Path, wake: UnboundedSender<Cause>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;

    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name()?.to_owned();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let ours = event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|n| n == name || n.to_string_lossy().starts_with(".."))
        });
        if ours {
            let _ = wake.send(Cause::FileChanged);
        }
    };
    let started = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher
            .watch(&directory, notify::RecursiveMode::NonRecursive)
            .map(|()| watcher)
    });
    match started {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                directory = %directory.display(),
                %error,
                "cannot watch the configuration file; it reloads on SIGHUP only"
            );
            None
        }
    }
}
