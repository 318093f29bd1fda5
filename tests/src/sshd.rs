//! A real OpenSSH server for the SSH trigger's tests: `/usr/sbin/sshd` in inetd mode (`-i`, one
//! process per connection) behind a loopback listener this harness holds for the server's whole
//! life, so no other process can take its port between a pick and a bind. Fresh host and user
//! keys in a temporary directory; every sshd process is killed when the server is dropped.
//!
//! A missing sshd fails the test with an instruction rather than skipping it: CI installs
//! openssh-server in `.ci/run`.

use std::{
    fs::File,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    /// The sshd processes started so far, one per accepted connection.
    sessions: Arc<Mutex<Vec<Child>>>,
    acceptor: tokio::task::JoinHandle<()>,
    pub port: u16,
    /// The user the tests run as; sshd accepts the generated key for it.
    pub username: String,
    /// Private key (ed25519, no passphrase) authorized for [`Sshd::username`].
    pub client_key: PathBuf,
    /// A known_hosts file with the server's host key as `[127.0.0.1]:PORT`.
    pub known_hosts: PathBuf,
    /// The server's public host key file.
    pub host_key_pub: PathBuf,
    pub log_file: PathBuf,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd and waits (bounded) until it accepts connections.
    pub async fn start() -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install openssh-server (`apt-get install openssh-server`, as .ci/run does)"
        );
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::tempdir().expect("temporary directory for sshd");
        let host_key = dir.path().join("ssh_host_ed25519_key");
        let client_key = dir.path().join("id_ed25519");
        keygen(&host_key, "");
        keygen(&client_key, "");
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized_keys)
            .expect("write authorized_keys");
        let username = command_output("id", &["-un"]);
        let log_file = dir.path().join("sshd.log");
        let stderr_file = dir.path().join("sshd.stderr");
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                authorized_keys = authorized_keys.display(),
            ),
        )
        .expect("write sshd_config");
        // The configuration is checked once here, so that a broken one fails with sshd's words
        // instead of as refused logins later.
        let check = Command::new(SSHD)
            .args(["-t", "-f"])
            .arg(&config)
            .output()
            .unwrap_or_else(|error| panic!("cannot start {SSHD}: {error}"));
        assert!(
            check.status.success(),
            "{SSHD} -t refuses the test configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sshd listener");
        let port = listener
            .local_addr()
            .expect("the listener's address")
            .port();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio::spawn(accept(
            listener,
            config.clone(),
            log_file.clone(),
            stderr_file.clone(),
            sessions.clone(),
        ));
        let sshd = Sshd {
            sessions,
            acceptor,
            port,
            username,
            client_key,
            known_hosts: dir.path().join("known_hosts"),
            host_key_pub: host_key.with_extension("pub"),
            log_file,
            dir,
        };
        let entry = sshd.known_hosts_line(&sshd.host_key_pub);
        std::fs::write(&sshd.known_hosts, entry).expect("write known_hosts");
        sshd
    }

    /// The working area of this server (for scripts and marker files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What sshd logged so far (its log file and stderr).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("sshd.log"), read("sshd.stderr"))
    }

    /// `[127.0.0.1]:PORT <type> <base64>` for a public key file, as `ssh-keyscan` prints it.
    fn known_hosts_line(&self, public_key: &Path) -> String {
        let text = std::fs::read_to_string(public_key).expect("read a public key");
        let mut fields = text.split_whitespace();
        let kind = fields.next().expect("public key type");
        let base64 = fields.next().expect("public key data");
        format!("[127.0.0.1]:{} {kind} {base64}\n", self.port)
    }

    /// Writes a known_hosts file named `name` in the server's directory and returns its path.
    pub fn write_known_hosts(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write a known_hosts file");
        path
    }

    /// An empty known_hosts file.
    pub fn empty_known_hosts(&self) -> PathBuf {
        self.write_known_hosts("known_hosts.empty", "")
    }

    /// A known_hosts file with another (fresh) ed25519 key for this server's `[127.0.0.1]:PORT`,
    /// after a comment line, so line numbers in messages are checked too.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let other = self.dir.path().join("other_host_key");
        if !other.exists() {
            keygen(&other, "");
        }
        let content = format!(
            "# previous server\n{}",
            self.known_hosts_line(&other.with_extension("pub"))
        );
        self.write_known_hosts("known_hosts.wrong", &content)
    }

    /// The correct entry, hashed by `ssh-keygen -H` (as with `HashKnownHosts yes`).
    pub fn hashed_known_hosts(&self) -> PathBuf {
        let path = self.write_known_hosts(
            "known_hosts.hashed",
            &self.known_hosts_line(&self.host_key_pub),
        );
        run(
            "ssh-keygen",
            &["-q", "-H", "-f", &path.display().to_string()],
        );
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text.starts_with("|1|"),
            "ssh-keygen -H did not hash the entry: {text}"
        );
        path
    }

    /// A passphrase-protected user key (for the trigger's refusal; the server never sees it).
    pub fn encrypted_client_key(&self) -> PathBuf {
        let path = self.dir.path().join("id_ed25519_encrypted");
        if !path.exists() {
            keygen(&path, "a passphrase");
        }
        path
    }

    /// A valid private key that is not in authorized_keys.
    pub fn unauthorized_client_key(&self) -> PathBuf {
        let path = self.dir.path().join("id_ed25519_unauthorized");
        if !path.exists() {
            keygen(&path, "");
        }
        path
    }

    /// The server key's `SHA256:…` fingerprint.
    pub fn fingerprint(&self) -> String {
        let listing = command_output(
            "ssh-keygen",
            &[
                "-l",
                "-E",
                "sha256",
                "-f",
                &self.host_key_pub.display().to_string(),
            ],
        );
        listing
            .split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("unexpected ssh-keygen -l output: {listing}"))
    }
}

/// Hands each accepted connection to a new `sshd -i`, as inetd would.
async fn accept(
    listener: tokio::net::TcpListener,
    config: PathBuf,
    log_file: PathBuf,
    stderr_file: PathBuf,
    sessions: Arc<Mutex<Vec<Child>>>,
) {
    while let Ok((connection, _)) = listener.accept().await {
        let Ok(connection) = connection.into_std() else {
            continue;
        };
        // sshd reads and writes the socket itself, blocking.
        if connection.set_nonblocking(false).is_err() {
            continue;
        }
        let Ok(output) = connection.try_clone() else {
            continue;
        };
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&stderr_file)
            .expect("sshd stderr file");
        let child = Command::new(SSHD)
            .args(["-i", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(&log_file)
            .stdin(Stdio::from(OwnedFd::from(connection)))
            .stdout(Stdio::from(OwnedFd::from(output)))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {SSHD}: {error}"));
        let mut sessions = sessions.lock().expect("the session list");
        // Finished sessions are reaped as new ones come, so the list stays short.
        sessions.retain_mut(|session| matches!(session.try_wait(), Ok(None)));
        sessions.push(child);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.acceptor.abort();
        if let Ok(mut sessions) = self.sessions.lock() {
            for session in sessions.iter_mut() {
                let _ = session.kill();
                let _ = session.wait();
            }
        }
    }
}

fn keygen(path: &Path, passphrase: &str) {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            "e2e",
            "-f",
            &path.display().to_string(),
        ],
    );
}

fn run(program: &str, args: &[&str]) {
    command_output(program, args);
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {program}: {error}; install openssh-client (ssh-keygen)")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
