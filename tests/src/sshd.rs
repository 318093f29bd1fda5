//! A real OpenSSH server for the SSH trigger's tests: `/usr/sbin/sshd` in the foreground on a
//! loopback port the OS picked, with fresh host and user keys in a temporary directory, killed
//! when dropped.
//!
//! A missing sshd fails the test with an instruction rather than skipping it: CI installs
//! openssh-server in `.ci/run`.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::wait_until;

pub const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to accept connections before a test fails.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Start attempts: another process can take the picked port before sshd binds it.
const START_ATTEMPTS: usize = 3;

pub struct Sshd {
    child: Option<Child>,
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
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {host_key}\n\
                     AuthorizedKeysFile {authorized_keys}\n\
                     PidFile {pid_file}\n\
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
                    pid_file = dir.path().join("sshd.pid").display(),
                ),
            )
            .expect("write sshd_config");
            let _ = std::fs::remove_file(&log_file);
            let mut child = Command::new(SSHD)
                .args(["-D", "-f"])
                .arg(&config)
                .arg("-E")
                .arg(&log_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&stderr_file).expect("sshd stderr file"))
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {SSHD}: {error}"));
            let ready = wait_until(START_TIMEOUT, || {
                let exited = !matches!(child.try_wait(), Ok(None));
                async move {
                    exited
                        || tokio::net::TcpStream::connect(("127.0.0.1", port))
                            .await
                            .is_ok()
                }
            })
            .await;
            if ready && matches!(child.try_wait(), Ok(None)) {
                let sshd = Sshd {
                    child: Some(child),
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
                return sshd;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        panic!(
            "{SSHD} did not start accepting connections in {START_ATTEMPTS} attempts; its log:\n{}{}",
            read(&log_file),
            read(&stderr_file)
        );
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

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("pick a free port")
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
