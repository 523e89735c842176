//! What starts a reload: `SIGHUP`, or a change of the configuration file or of a listener's
//! certificate or key on disk. Either loads the configuration again from where it came from and
//! hands it to the running app, which validates it in full and swaps it in, or keeps the one in
//! force.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
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

/// Reloads on `SIGHUP` and on every change of the configuration file (when it came from one) or
/// of the listener certificate files `config` names; each loaded configuration adds the files it
/// names.
///
/// Credential files are not watched: every token fetch reads them again, so a rotated secret or
/// certificate is used at the next refresh without a reload.
pub fn triggers(file: Option<PathBuf>, config: &Config) -> Reloads {
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
    let mut watch = FileWatch::start(wake);
    if let Some(watch) = &mut watch {
        file.iter().for_each(|file| watch.add(file));
        config.reloaded_files().for_each(|file| watch.add(file));
    }
    tokio::spawn(load_on_wake(file, woken, loaded, watch));
    reloads
}

async fn load_on_wake(
    file: Option<PathBuf>,
    mut woken: UnboundedReceiver<Cause>,
    loaded: UnboundedSender<Result<Config, ConfigError>>,
    // Held here: dropping the watcher stops it.
    mut watch: Option<FileWatch>,
) {
    while let Some(cause) = woken.recv().await {
        if cause == Cause::FileChanged {
            tokio::time::sleep(SETTLE).await;
        }
        // One load for the whole burst.
        while woken.try_recv().is_ok() {}
        tracing::info!(?cause, "loading the configuration again");
        let config = Config::load(file.as_deref());
        if let (Some(watch), Ok(config)) = (&mut watch, &config) {
            config.reloaded_files().for_each(|file| watch.add(file));
        }
        if loaded.send(config).is_err() {
            return;
        }
    }
}

/// Watches the directories of the files, not the files: an editor's rename or Kubernetes' swap
/// of the `..data` symlink replaces a file, and a watch on the old one would see nothing more.
struct FileWatch {
    watcher: notify::RecommendedWatcher,
    /// The watched files' names; a Kubernetes volume's `..data` swap counts for all of them.
    names: Arc<Mutex<HashSet<OsString>>>,
    directories: HashSet<PathBuf>,
}

impl FileWatch {
    fn start(wake: UnboundedSender<Cause>) -> Option<Self> {
        let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
        let watched = names.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if event.kind.is_access() {
                return;
            }
            let watched = watched.lock().unwrap_or_else(PoisonError::into_inner);
            let ours = event.paths.iter().any(|path| {
                path.file_name().is_some_and(|name| {
                    watched.contains(name) || name.to_string_lossy().starts_with("..")
                })
            });
            if ours {
                let _ = wake.send(Cause::FileChanged);
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(Self {
                watcher,
                names,
                directories: HashSet::new(),
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot watch files; the configuration reloads on SIGHUP only");
                None
            }
        }
    }

    fn add(&mut self, file: &Path) {
        use notify::Watcher as _;

        let Some(name) = file.file_name() else { return };
        let directory = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        self.names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned());
        if self.directories.contains(&directory) {
            return;
        }
        match self
            .watcher
            .watch(&directory, notify::RecursiveMode::NonRecursive)
        {
            Ok(()) => {
                self.directories.insert(directory);
            }
            Err(error) => tracing::warn!(
                directory = %directory.display(),
                %error,
                "cannot watch this directory; changes in it reload on SIGHUP only"
            ),
        }
    }
}
