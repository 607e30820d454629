//! The directory source: every `*.yaml`/`*.yml` under a directory, multi-document, watched.
//!
//! A file that stops parsing keeps its last good objects in the store (and its error is
//! reported), so a typo never takes routes down.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::manifest::parse_manifests;
use crate::store::{Object, Rejection, Store};

/// How long to wait after a file event for the burst of events an editor or `kubectl cp`
/// makes to settle, before reloading. Short: config-change-to-serving latency is a headline
/// number, and a file caught half-written keeps its last good objects anyway.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

/// A loaded store and the moment the change that produced it was first seen.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Shared: the config loop takes it without copying it.
    pub store: Arc<Store>,
    pub changed_at: Instant,
    /// The source has read everything once (always, for a directory): until then the store is
    /// not a configuration to serve.
    pub synced: bool,
}

/// Largest manifest file weir reads: a directory of manifests holds files of kilobytes, and a
/// file is parsed whole.
pub const MAX_FILE_SIZE: u64 = 8 * 1024 * 1024;

/// Reads a directory, remembering each file's last good objects across reloads, and each file's
/// text with what it parsed to, so a reload parses only the files that changed.
#[derive(Default)]
pub struct DirLoader {
    last_good: HashMap<PathBuf, Vec<Object>>,
    parsed: HashMap<PathBuf, Parsed>,
    /// Files the last load parsed (the others were unchanged).
    parsed_last: usize,
}

/// A file's text and what it parsed to.
struct Parsed {
    text: String,
    objects: Vec<Object>,
    errors: Vec<Rejection>,
}

fn object_key(o: &Object) -> (String, String, String) {
    macro_rules! key {
        ($k:literal, $x:expr) => {
            (
                $k.to_string(),
                $x.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                $x.metadata.name.clone().unwrap_or_default(),
            )
        };
    }
    match o {
        Object::Ingress(x) => key!("Ingress", x),
        Object::IngressClass(x) => key!("IngressClass", x),
        Object::GatewayClass(x) => key!("GatewayClass", x),
        Object::Gateway(x) => key!("Gateway", x),
        Object::HttpRoute(x) => key!("HTTPRoute", x),
        Object::GrpcRoute(x) => key!("GRPCRoute", x),
        Object::TlsRoute(x) => key!("TLSRoute", x),
        Object::Service(x) => key!("Service", x),
        Object::EndpointSlice(x) => key!("EndpointSlice", x),
        Object::Secret(x) => key!("Secret", x),
        Object::BackendPolicy(x) => key!("BackendPolicy", x),
        Object::MeshAuthorization(x) => key!("MeshAuthorization", x),
        Object::ReferenceGrant(x) => key!("ReferenceGrant", x),
        Object::Namespace(x) => key!("Namespace", x),
    }
}

/// Every manifest file under `dir`, sorted, recursing into subdirectories (but not hidden
/// ones such as the `..data` of a mounted ConfigMap's timestamped copies).
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl DirLoader {
    /// Loads `dir` into a fresh store. Errors reading the directory itself are returned; errors
    /// in files become rejections in `store.source_errors`.
    pub fn load(&mut self, dir: &Path) -> std::io::Result<Store> {
        let mut store = Store::default();
        let mut seen = HashMap::new();
        let mut parsed = HashMap::new();
        let mut parsed_now = 0;
        for path in manifest_files(dir)? {
            let file = path.display().to_string();
            let text = match read_manifest(&path) {
                Ok(t) => t,
                Err(e) => {
                    store.source_errors.push(file_error(&file, e));
                    // a file weir cannot read keeps its last good objects
                    let kept = self.last_good.remove(&path).unwrap_or_default();
                    for o in &kept {
                        store.apply(o.clone(), &file);
                    }
                    seen.insert(path, kept);
                    continue;
                }
            };
            // the same text parses to the same objects: only changed files are parsed again
            let done = match self.parsed.remove(&path) {
                Some(p) if p.text == text => p,
                _ => {
                    let (objects, errors) = parse_manifests(&text, &file);
                    parsed_now += 1;
                    Parsed { text, objects, errors }
                }
            };
            let (mut objects, errors) = (done.objects.clone(), done.errors.clone());
            parsed.insert(path.clone(), done);
            if !errors.is_empty() {
                // keep the last good version of whatever failed in this file
                let good: BTreeMap<_, _> = objects.iter().map(|o| (object_key(o), ())).collect();
                for old in self.last_good.get(&path).into_iter().flatten() {
                    let key = object_key(old);
                    let failed_here = errors.iter().any(|e| {
                        (e.name.is_empty() || (e.kind == key.0 && e.name == key.2)) && !good.contains_key(&key)
                    });
                    if failed_here {
                        objects.push(old.clone());
                    }
                }
            }
            for o in &objects {
                store.apply(o.clone(), &file);
            }
            store.source_errors.extend(errors);
            seen.insert(path, objects);
        }
        self.last_good = seen;
        self.parsed = parsed;
        self.parsed_last = parsed_now;
        Ok(store)
    }
}

/// A manifest file's text, or why weir does not read it (too large, not UTF-8, unreadable).
fn read_manifest(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?.len();
    if size > MAX_FILE_SIZE {
        return Err(format!(
            "is {size} bytes; weir reads manifest files of at most {} MiB: split it",
            MAX_FILE_SIZE / (1024 * 1024)
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {e}"))
}

fn file_error(file: &str, reason: String) -> Rejection {
    Rejection {
        kind: String::new(),
        namespace: String::new(),
        name: String::new(),
        file: file.into(),
        reason,
        served: false,
    }
}

/// Whether a change at `path` can change the configuration: a manifest file, a directory, or
/// the entries Kubernetes' atomic writer swaps in a ConfigMap or Secret volume (`..data`,
/// `..2026_12_05...`). A log or editor file beside the manifests is not.
pub fn may_hold_manifests(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) || name.starts_with("..") || path.is_dir()
}

/// Loads `dir` once, then reloads it when a manifest changes, publishing each store that differs
/// from the last on the returned channel (a reload that reads the same objects publishes
/// nothing). The watcher lives as long as the spawned task.
pub fn watch_dir(dir: PathBuf) -> std::io::Result<watch::Receiver<Loaded>> {
    let mut loader = DirLoader::default();
    let first = Loaded { store: Arc::new(loader.load(&dir)?), changed_at: Instant::now(), synced: true };
    let (tx, rx) = watch::channel(first);
    let mut changes = Changes::watch(&[&dir], may_hold_manifests)?;
    tokio::spawn(async move {
        while let Some(changed_at) = changes.next().await {
            // read and parsed on a blocking thread: no file, however slow to parse, holds up
            // a runtime worker serving requests
            let (dir_, mut loader_) = (dir.clone(), std::mem::take(&mut loader));
            let Ok((loaded, result)) = tokio::task::spawn_blocking(move || {
                let result = loader_.load(&dir_);
                (loader_, result)
            })
            .await
            else {
                return;
            };
            loader = loaded;
            match result {
                Ok(store) => {
                    if tx.is_closed() {
                        return;
                    }
                    publish_if_changed(&tx, Loaded { store: Arc::new(store), changed_at, synced: true });
                }
                Err(e) => tracing::error!(dir = %dir.display(), error = %e,
                    "cannot read the config directory; the last good configuration keeps serving"),
            }
        }
    });
    Ok(rx)
}

/// Publishes `loaded` unless it holds the objects already published (a reload that read the
/// same manifests: no new generation, nothing reset). Returns whether it published.
fn publish_if_changed(tx: &watch::Sender<Loaded>, loaded: Loaded) -> bool {
    tx.send_if_modified(|current| {
        let changed = current.store != loaded.store;
        if changed {
            *current = loaded;
        }
        changed
    })
}

/// Changes to files under some paths (writes, creations, renames, removals; not reads), with
/// each burst of events (an editor's save, a Secret volume's symlink swap) reported once, after
/// it settles.
pub struct Changes {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<Instant>,
}

impl Changes {
    /// Watches `paths` (directories recursively), reporting changes to the files `relevant`
    /// accepts.
    pub fn watch(paths: &[&Path], relevant: fn(&Path) -> bool) -> std::io::Result<Changes> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if !event.kind.is_access() && event.paths.iter().any(|p| relevant(p)) {
                    let _ = events_tx.send(Instant::now());
                }
            }
        })
        .map_err(std::io::Error::other)?;
        for path in paths {
            watcher.watch(path, RecursiveMode::Recursive).map_err(std::io::Error::other)?;
        }
        Ok(Changes { _watcher: watcher, events })
    }

    /// Waits for the next burst of changes to settle; returns when its first event was seen.
    pub async fn next(&mut self) -> Option<Instant> {
        settle(&mut self.events).await
    }
}

/// The next burst of `events`: waits for its first, lets [`DEBOUNCE`] pass so the rest of the
/// burst arrives, and swallows it; returns the first event's time.
async fn settle(events: &mut mpsc::UnboundedReceiver<Instant>) -> Option<Instant> {
    let first = events.recv().await?;
    tokio::time::sleep(DEBOUNCE).await;
    while events.try_recv().is_ok() {}
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn broken_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.yaml");
        std::fs::write(&file, SVC).unwrap();
        let mut loader = DirLoader::default();
        assert_eq!(loader.load(dir.path()).unwrap().services.len(), 1);
        std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap();
        let store = loader.load(dir.path()).unwrap();
        assert_eq!(store.services.len(), 1, "the last good Service stays");
        assert_eq!(store.source_errors.len(), 1);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(loader.load(dir.path()).unwrap().services.len(), 0, "deleting the file deletes it");
    }

    #[test]
    fn a_reload_parses_only_the_files_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(format!("{name}.yaml")), SVC.replace("name: a", &format!("name: {name}")))
                .unwrap();
        }
        let mut loader = DirLoader::default();
        assert_eq!(loader.load(dir.path()).unwrap().services.len(), 3);
        assert_eq!(loader.parsed_last, 3);
        assert_eq!(loader.load(dir.path()).unwrap().services.len(), 3);
        assert_eq!(loader.parsed_last, 0, "nothing changed");
        std::fs::write(dir.path().join("b.yaml"), SVC.replace("name: a", "name: b2")).unwrap();
        let store = loader.load(dir.path()).unwrap();
        assert_eq!(loader.parsed_last, 1, "b.yaml alone");
        assert!(store.services.contains_key(&("default".into(), "b2".into())));
        assert!(!store.services.contains_key(&("default".into(), "b".into())));
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_and_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.yaml");
        std::fs::write(&file, SVC).unwrap();
        let mut loader = DirLoader::default();
        assert_eq!(loader.load(dir.path()).unwrap().services.len(), 1);
        let padding = "#".repeat(MAX_FILE_SIZE as usize);
        std::fs::write(&file, format!("{SVC}{padding}\n")).unwrap();
        let store = loader.load(dir.path()).unwrap();
        assert_eq!(store.services.len(), 1, "the last good Service stays");
        let reason = &store.source_errors[0].reason;
        assert!(reason.contains("bytes; weir reads manifest files of at most 8 MiB: split it"), "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_change_reported_after_the_debounce() {
        let (tx, mut events) = mpsc::unbounded_channel();
        let first = Instant::now();
        tx.send(first).unwrap();
        let started = tokio::time::Instant::now();
        let burst = tokio::spawn(async move {
            let got = settle(&mut events).await;
            (got, tokio::time::Instant::now(), events)
        });
        tokio::time::sleep(DEBOUNCE / 2).await;
        tx.send(Instant::now()).unwrap(); // the same save, a moment later
        let (got, at, mut events) = burst.await.unwrap();
        assert_eq!(got, Some(first), "the burst is reported with its first event's time");
        assert_eq!(at - started, DEBOUNCE, "reported once the debounce has passed");
        assert!(events.try_recv().is_err(), "the rest of the burst is swallowed");
        let next = Instant::now();
        tx.send(next).unwrap();
        assert_eq!(settle(&mut events).await, Some(next), "a later change is a new burst");
        drop(tx);
        assert_eq!(settle(&mut events).await, None, "the watcher is gone");
    }

    #[test]
    fn only_manifests_and_the_atomic_writers_swaps_can_change_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        for (path, relevant) in [
            ("routes.yaml", true),
            ("sub/routes.yml", true),
            ("..data", true),
            ("..2026_12_05_10_00_00.123", true),
            ("weir.log", false),
            (".routes.yaml.swp", false),
            ("notes.txt", false),
        ] {
            assert_eq!(may_hold_manifests(&dir.path().join(path)), relevant, "{path}");
        }
        assert!(may_hold_manifests(dir.path()), "a directory (moved in with its files)");
    }

    #[test]
    fn a_reload_that_reads_the_same_objects_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
        let mut loader = DirLoader::default();
        let load = |loader: &mut DirLoader| Loaded {
            store: Arc::new(loader.load(dir.path()).unwrap()),
            changed_at: Instant::now(),
            synced: true,
        };
        let (tx, mut rx) = watch::channel(load(&mut loader));
        rx.mark_unchanged();
        assert!(!publish_if_changed(&tx, load(&mut loader)), "the same objects");
        assert!(!rx.has_changed().unwrap());
        std::fs::write(dir.path().join("svc.yaml"), SVC.replace("port: 80", "port: 81")).unwrap();
        assert!(publish_if_changed(&tx, load(&mut loader)), "a changed Service");
        assert!(rx.has_changed().unwrap());
    }

    #[test]
    fn only_yaml_files_are_read_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.yml"), SVC).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let store = DirLoader::default().load(dir.path()).unwrap();
        assert_eq!(store.services.len(), 1);
        assert!(store.source_errors.is_empty());
    }
}
