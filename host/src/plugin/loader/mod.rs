//! Loading, checking, starting and unloading one copy of a plugin library.
//!
//! This is the only module tree with `unsafe` code (with [`fatal`], the crash report). The
//! invariants it keeps:
//! - every copy is loaded from a private file (`<data_dir>/plugin-copies/`), so the operator can
//!   replace the configured file at any time and each copy gets fresh statics;
//! - `abi_stable` checks the interface version and the layout of the root module before any
//!   plugin function is called through typed pointers;
//! - `start` and `shutdown` run on short-lived host threads that have exited before the library
//!   is closed, so no thread-local destructor registered by plugin code pins the copy;
//! - nothing the copy allocated is kept: metadata and errors are copied into host `String`s;
//! - the library is closed only after the instance is shut down (its threads joined) and its
//!   object dropped, on a retirement thread the host joins at exit;
//! - after it is closed, and only when the loader has really unloaded it (checked with
//!   `RTLD_NOLOAD`), the copy's own heap (reported by the library, see
//!   `plugin_api::PluginHeap`) is unmapped, so whatever the copy left allocated is freed.

pub mod fatal;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use abi_stable::{
    library::{AbiHeaderRef, LibraryError, RootModule, ROOT_MODULE_LOADER_NAME_WITH_NUL},
    std_types::{RResult, RString},
};
use plugin_api::{
    HostServicesBox, PluginHeap, PluginInstanceBox, PluginModRef, PluginRequest, ResponseSinkBox,
    HEAP_SYMBOL,
};
use sha2::{Digest, Sha256};

/// Why a load failed, as the plugin state it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFailure {
    Missing,
    Incompatible,
    Failed,
}

#[derive(Debug, Clone)]
pub struct LoadError {
    pub kind: LoadFailure,
    pub message: String,
}

impl LoadError {
    fn new(kind: LoadFailure, message: impl Into<String>) -> LoadError {
        LoadError {
            kind,
            message: message.into(),
        }
    }
}

/// Facts about a loaded copy, all owned by the host.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The interface version the plugin was built against.
    pub abi: String,
    pub sha256: String,
    pub source: PathBuf,
    pub loaded_at: SystemTime,
}

/// Which library one load takes and how it starts it: the same whether the host loads it or a
/// plugin's child process does (it crosses to the child in the start message).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadTarget {
    pub name: String,
    /// The configured path: a file, or a directory holding `lib<name>.so`.
    pub configured: PathBuf,
    /// Hex SHA-256 the file must have; empty for any.
    pub pin: String,
    pub settings_json: String,
    pub copies_dir: PathBuf,
    pub sequence: u64,
}

/// Without the settings, which may hold secrets.
impl std::fmt::Debug for LoadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadTarget")
            .field("name", &self.name)
            .field("configured", &self.configured)
            .field("pin", &self.pin)
            .field("settings_json", &"<not shown>")
            .field("copies_dir", &self.copies_dir)
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// What one load needs.
pub struct LoadRequest {
    pub target: LoadTarget,
    pub services: HostServicesBox,
}

/// Threads that retire old copies; joined when the host stops.
#[derive(Clone, Default)]
pub struct Retirements {
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Retirements {
    pub fn push(&self, handle: JoinHandle<()>) {
        let mut threads = self
            .threads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        threads.retain(|thread| !thread.is_finished());
        threads.push(handle);
    }

    /// Waits up to `grace` for every retirement to finish; returns how many are still running.
    pub fn wait(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        loop {
            let pending = {
                let mut threads = self
                    .threads
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let (done, running): (Vec<_>, Vec<_>) =
                    threads.drain(..).partition(|thread| thread.is_finished());
                for thread in done {
                    let _ = thread.join();
                }
                *threads = running;
                threads.len()
            };
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A started copy of a plugin. Dropping it retires the copy in the background: shutdown, then
/// unload. Holders of an `Arc<LoadedPlugin>` (in-flight requests) keep it alive.
pub struct LoadedPlugin {
    pub info: BuildInfo,
    parts: Option<LivePlugin>,
    retirements: Retirements,
    /// This copy's entry in the fatal-signal report.
    report_id: u64,
}

/// Numbers copies for the fatal-signal report.
static NEXT_REPORT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct LivePlugin {
    instance: PluginInstanceBox,
    library: libloading::Library,
    copy: PathBuf,
}

impl LoadedPlugin {
    /// Hands one request to the instance, which only enqueues it.
    pub fn handle(&self, request: PluginRequest, reply: ResponseSinkBox) {
        if let Some(parts) = &self.parts {
            parts.instance.handle(request, reply);
        }
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        let Some(parts) = self.parts.take() else {
            return;
        };
        let label = format!("{} {}", self.info.name, self.info.version);
        let report_id = self.report_id;
        let spawned = std::thread::Builder::new()
            .name(format!("retire-{}", self.info.name))
            .spawn(move || {
                if retire(parts, &label) {
                    fatal::set_loaded(report_id, None);
                }
            });
        match spawned {
            Ok(handle) => self.retirements.push(handle),
            Err(error) => {
                // Without a thread we cannot shut it down safely off this (async) thread:
                // keep the copy mapped forever rather than risk unloading running code.
                tracing::error!(%error, "cannot start a retirement thread; the old plugin copy stays loaded");
            }
        }
    }
}

/// Shuts a copy down and unloads it; false when it had to stay loaded.
fn retire(parts: LivePlugin, label: &str) -> bool {
    let LivePlugin {
        instance,
        library,
        copy,
    } = parts;
    let started = Instant::now();
    let stopper = std::thread::Builder::new()
        .name("plugin-shutdown".into())
        .spawn(move || {
            instance.shutdown();
            drop(instance);
        });
    let stopped = match stopper {
        Ok(handle) => handle.join().is_ok(),
        Err(_) => false,
    };
    if !stopped {
        tracing::error!(
            plugin = label,
            "plugin shutdown did not complete; its copy stays loaded"
        );
        std::mem::forget(library);
        return false;
    }
    // Closing is sound now: the instance is shut down (all its threads joined) and dropped, the threads that
    // ran plugin code on the host's behalf (start, shutdown) have exited, and the host keeps
    // no pointer into the library: every value it received was copied into host types. So no
    // code or data of this copy is reachable any more when it is closed.
    let heap = heap_range(&library);
    match library.close() {
        // A library marked NODELETE (a thread-local destructor, a unique symbol, a link flag)
        // outlives `dlclose`: its statics may still point into its heap.
        Ok(()) if still_loaded(&copy) => tracing::warn!(
            plugin = label,
            "the old plugin copy stayed loaded after closing (the library is marked not to be unloaded); its heap stays mapped"
        ),
        Ok(()) => release_heap(heap, label),
        Err(error) => {
            tracing::warn!(plugin = label, %error, "closing the old plugin copy failed; its heap stays mapped")
        }
    }
    let _ = std::fs::remove_file(&copy);
    tracing::info!(
        plugin = label,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "old plugin copy shut down and unloaded"
    );
    true
}

/// The range of the copy's own heap, if the library reports one (see `plugin_api::PluginHeap`).
/// Called after the instance is shut down and dropped, before the library is closed.
fn heap_range(library: &libloading::Library) -> Option<PluginHeap> {
    // SAFETY: `export_plugin!` defines this symbol as `extern "C" fn() -> PluginHeap`, a
    // `#[repr(C)]` pair of integers; a library without it has no heap of its own. The function
    // only reads two atomics of the copy, which is still loaded while this runs.
    let report = unsafe { library.get::<extern "C" fn() -> PluginHeap>(HEAP_SYMBOL) }.ok()?;
    let heap = report();
    (heap.size > 0 && heap.base != 0).then_some(heap)
}

/// Whether the dynamic loader still has the library at `path` loaded after it was closed.
fn still_loaded(path: &Path) -> bool {
    // SAFETY: with RTLD_NOLOAD, `dlopen` never loads anything, so no initialiser runs: it only
    // returns another reference to a library that is still loaded (or fails), and that
    // reference is closed again at once when the handle drops here.
    let open = unsafe {
        libloading::os::unix::Library::open(Some(path), libc::RTLD_NOLOAD | libc::RTLD_LAZY)
    };
    open.is_ok()
}

/// Unmaps a closed copy's heap: everything it allocated, statics included, is freed.
fn release_heap(heap: Option<PluginHeap>, label: &str) {
    let Some(heap) = heap else { return };
    let Some(base) = std::ptr::NonNull::new(heap.base as *mut std::ffi::c_void) else {
        return;
    };
    // SAFETY: the range was reserved by the copy for its heap alone, and the copy is closed:
    // none of its code runs any more and, by the loader's invariants, the host holds no
    // pointer into memory the copy allocated (everything it received was copied into host
    // types while the copy was loaded; its threads were joined). Nothing reads the range again.
    if let Err(error) = unsafe { nix::sys::mman::munmap(base, heap.size) } {
        tracing::warn!(plugin = label, %error, "unmapping the closed copy's heap failed");
    }
}

/// Finds the library file the configuration points at.
pub fn resolve(name: &str, configured: &Path) -> Result<PathBuf, LoadError> {
    let file_name = format!("lib{name}.so");
    if configured.is_dir() {
        let candidate = configured.join(&file_name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        return Err(LoadError::new(
            LoadFailure::Missing,
            format!(
                "no {file_name} in directory {}; build it with `cargo build --release -p {name}` or fix plugins.{name}.path",
                configured.display()
            ),
        ));
    }
    if configured.is_file() {
        return Ok(configured.to_path_buf());
    }
    Err(LoadError::new(
        LoadFailure::Missing,
        format!(
            "no plugin file at {}; build it with `cargo build --release -p {name}` or fix plugins.{name}.path",
            configured.display()
        ),
    ))
}

/// Loads, checks and starts one copy. Blocking: call it off the async workers.
pub fn load(request: LoadRequest, retirements: Retirements) -> Result<LoadedPlugin, LoadError> {
    let source = resolve(&request.target.name, &request.target.configured)?;
    let (copy, sha256) = private_copy(&request, &source)?;
    if !request.target.pin.is_empty() && !request.target.pin.eq_ignore_ascii_case(&sha256) {
        let _ = std::fs::remove_file(&copy);
        return Err(LoadError::new(
            LoadFailure::Incompatible,
            format!(
                "{} has sha256 {sha256}, but plugins.{}.sha256 pins {}; install the pinned build or update the pin",
                source.display(),
                request.target.name,
                request.target.pin
            ),
        ));
    }

    let name = request.target.name.clone();
    let request_name = request.target.name.clone();
    let copy_for_thread = copy.clone();
    let loader = std::thread::Builder::new()
        .name(format!("load-{name}"))
        .spawn(move || open_and_start(&copy_for_thread, request));
    let outcome = match loader {
        Ok(handle) => handle.join().unwrap_or_else(|_| {
            Err((
                None,
                LoadError::new(LoadFailure::Failed, "the plugin loader thread panicked"),
            ))
        }),
        Err(error) => Err((
            None,
            LoadError::new(
                LoadFailure::Failed,
                format!("cannot start the loader thread: {error}"),
            ),
        )),
    };
    match outcome {
        Ok(started) => {
            let report_id = NEXT_REPORT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            fatal::set_loaded(
                report_id,
                Some(format!(
                    "{} {} (sha256 {})",
                    started.name,
                    started.version,
                    &sha256[..12]
                )),
            );
            Ok(LoadedPlugin {
                info: BuildInfo {
                    name: started.name,
                    version: started.version,
                    description: started.description,
                    abi: started.abi,
                    sha256,
                    source,
                    loaded_at: SystemTime::now(),
                },
                parts: Some(LivePlugin {
                    instance: started.instance,
                    library: started.library,
                    copy,
                }),
                retirements,
                report_id,
            })
        }
        Err((library, error)) => {
            // The loader thread has exited: closing now cannot leave plugin code running.
            if let Some(library) = library {
                let heap = heap_range(&library);
                if library.close().is_ok() {
                    release_heap(heap, &request_name);
                }
            }
            let _ = std::fs::remove_file(&copy);
            Err(error)
        }
    }
}

/// Copies the library to a private file, hashing it on the way, in bounded memory. The hash
/// is of the bytes actually loaded, so a pin cannot be raced by replacing the file.
fn private_copy(request: &LoadRequest, source: &Path) -> Result<(PathBuf, String), LoadError> {
    use std::io::{Read, Write};

    let mut input = std::fs::File::open(source).map_err(|error| {
        LoadError::new(
            LoadFailure::Missing,
            format!("cannot read {}: {error}", source.display()),
        )
    })?;
    let failed = |error: std::io::Error| {
        LoadError::new(
            LoadFailure::Failed,
            format!(
                "cannot write a private copy of the plugin in {}: {error}",
                request.target.copies_dir.display()
            ),
        )
    };
    std::fs::create_dir_all(&request.target.copies_dir).map_err(failed)?;
    let staging = request.target.copies_dir.join(format!(
        "lib{}-{}-{}.partial",
        request.target.name,
        std::process::id(),
        request.target.sequence
    ));
    let mut output = {
        use std::os::unix::fs::OpenOptionsExt;
        // Private like everything in the data directory.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staging)
            .map_err(failed)?
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = input.read(&mut buffer).map_err(|error| {
            LoadError::new(
                LoadFailure::Missing,
                format!("cannot read {}: {error}", source.display()),
            )
        })?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        output.write_all(&buffer[..read]).map_err(failed)?;
    }
    drop(output);
    let sha256 = hex::encode(hasher.finalize());
    let copy = request.target.copies_dir.join(format!(
        "lib{}-{}-{}-{}.so",
        request.target.name,
        std::process::id(),
        request.target.sequence,
        &sha256[..12]
    ));
    std::fs::rename(&staging, &copy).map_err(failed)?;
    Ok((copy, sha256))
}

/// Removes copies left behind by earlier processes (a crash skips retirement).
pub fn clean_stale_copies(copies_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(copies_dir) else {
        return;
    };
    let own = format!("-{}-", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.ends_with(".so") || name.ends_with(".partial")) && !name.contains(&own) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

struct Started {
    name: String,
    version: String,
    description: String,
    abi: String,
    instance: PluginInstanceBox,
    library: libloading::Library,
}

type Outcome = Result<Started, (Option<libloading::Library>, LoadError)>;

fn incompatible(message: String) -> LoadError {
    LoadError::new(LoadFailure::Incompatible, message)
}

/// Runs on the short-lived loader thread.
fn open_and_start(copy: &Path, request: LoadRequest) -> Outcome {
    use libloading::os::unix::{Library as UnixLibrary, RTLD_LOCAL, RTLD_NOW};

    // SAFETY: loading a library runs its initializers. Plugins are Rust cdylibs built against
    // `plugin-api`, which have no global constructors of their own; the file is a private copy
    // that nothing else writes while it is mapped. RTLD_LOCAL keeps its symbols from resolving
    // anyone else's, RTLD_NOW surfaces missing symbols here instead of at a later call.
    let library: libloading::Library =
        match unsafe { UnixLibrary::open(Some(copy), RTLD_NOW | RTLD_LOCAL) } {
            Ok(library) => library.into(),
            Err(error) => {
                return Err((
                    None,
                    incompatible(format!("not a loadable library: {error}")),
                ))
            }
        };
    match check_and_start(&library, request) {
        Ok((name, version, description, abi, instance)) => Ok(Started {
            name,
            version,
            description,
            abi,
            instance,
            library,
        }),
        Err(error) => Err((Some(library), error)),
    }
}

fn check_and_start(
    library: &libloading::Library,
    request: LoadRequest,
) -> Result<(String, String, String, String, PluginInstanceBox), LoadError> {
    // SAFETY: `abi_stable` exports its root-module header under this name with the type
    // `AbiHeaderRef` (a pointer-sized reference). The value is copied out while the library
    // is loaded; `upgrade` validates the header it points to before anything else is read.
    let header: AbiHeaderRef =
        match unsafe { library.get::<AbiHeaderRef>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) } {
            Ok(symbol) => *symbol,
            Err(_) => {
                return Err(incompatible(
                    "not a powerautomation plugin: the library exports no abi_stable root module"
                        .into(),
                ))
            }
        };
    let lib_header = header.upgrade().map_err(describe_library_error)?;
    let abi = lib_header.version_strings().version.as_str().to_owned();
    let module: PluginModRef = lib_header
        .init_root_module::<PluginModRef>()
        .map_err(describe_library_error)?;

    let metadata = (module.metadata())();
    let name = metadata.name.as_str().to_owned();
    let version = metadata.version.as_str().to_owned();
    let description = metadata.description.as_str().to_owned();
    drop(metadata);
    if name != request.target.name {
        return Err(incompatible(format!(
            "the library is plugin {name:?}, but it is configured as plugins.{}",
            request.target.name
        )));
    }
    match (module.start())(
        request.services,
        RString::from(request.target.settings_json),
    ) {
        RResult::ROk(instance) => Ok((name, version, description, abi, instance)),
        RResult::RErr(message) => Err(LoadError::new(
            LoadFailure::Failed,
            format!("{name} {version} failed to start: {}", message.as_str()),
        )),
    }
}

/// Turns `abi_stable`'s errors into host-owned messages (they may point into the library).
fn describe_library_error(error: LibraryError) -> LoadError {
    let kind = match &error {
        LibraryError::RootModule { .. } => LoadFailure::Failed,
        _ => LoadFailure::Incompatible,
    };
    let message = match &error {
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "built against plugin interface {actual_version}, but this host speaks {expected_version} (major versions must match); rebuild the plugin against this host's plugin-api"
        ),
        LibraryError::AbiInstability(_) => {
            let mut text = error.to_string();
            if text.len() > 4000 {
                let cut = (0..=4000).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                text.truncate(cut);
                text.push_str(" …");
            }
            format!(
                "the plugin's types do not match interface {}: {text}",
                PluginModRef::VERSION_STRINGS.version.as_str()
            )
        }
        _ => format!("{error}"),
    };
    LoadError::new(kind, message)
}
