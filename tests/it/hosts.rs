//! All of Azure DevOps through one proxy URL, against fakes under the real host names: sibling
//! hosts at `/_host/{name}/...`, rules per host, absolute URLs in responses rewritten back to
//! the proxy, and storage links left for the client to fetch without any credential.

use http::StatusCode;
use tokio::io::AsyncReadExt as _;

use crate::access::Keys;
use crate::harness::{Options, Stack, basic};
use crate::support::azure::{BLOB_BYTES, FakeAzure, FakeBlob};
use crate::support::{self, Reply};

struct Hosts {
    stack: Stack,
    azure: FakeAzure,
    blob: FakeBlob,
    key: String,
}

/// The proxy in keys mode in front of the fake under Azure DevOps' names, with one client whose
/// rules name the default upstream, pkgs.dev.azure.com and the legacy hosts.
async fn hosts_stack(listen_toml: &str) -> Hosts {
    hosts_stack_with(listen_toml, RULES).await
}

/// The rules of the client of [`hosts_stack`].
const RULES: &str = r#"
              { methods = ["GET"], path = "/contoso/_apis/**" },
              { methods = ["GET"], path = "/contoso/_redirect/**" },
              { host = "pkgs.dev.azure.com", methods = ["GET"], path = "/contoso/_packaging/**" },
              { host = "pkgs.dev.azure.com", methods = ["GET"], path = "/contoso/*/_packaging/**" },
              { host = "pkgs.dev.azure.com", methods = ["POST"], path = "/contoso/_packaging/*/pypi/upload" },
              { host = "*.visualstudio.com", methods = ["GET"], path = "/**" },
              { methods = ["GET", "OPTIONS"], path = "/fabrikam/**" },
              { host = "vsrm.dev.azure.com", methods = ["GET", "OPTIONS"], path = "/fabrikam/**" },
"#;

async fn hosts_stack_with(listen_toml: &str, rules: &str) -> Hosts {
    let blob = FakeBlob::start().await;
    let azure = FakeAzure::start(blob.url()).await;
    let key = ado_auth_proxy::keys::generate().expect("random");
    let stack = Stack::start_with(Options {
        upstream_url: Some("https://dev.azure.com".into()),
        upstream_toml: format!(
            "ca_file = \"{}\"\n{}",
            FakeAzure::ca_file().display(),
            azure.resolve_toml()
        ),
        listen_toml: listen_toml.into(),
        access_toml: format!(
            r#"
            [inbound]
            mode = "keys"

            [[clients]]
            name = "feeds"
            key_sha256 = "{}"
            allow = [{}]
            "#,
            Keys::hash(&key),
            rules
        ),
        ..Options::default()
    })
    .await;
    azure.trust(&stack.entra.config().signing_key);
    Hosts {
        stack,
        azure,
        blob,
        key,
    }
}

impl Hosts {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let authorization = basic("tool", &self.key);
        let mut all = vec![("authorization", authorization.as_str())];
        all.extend_from_slice(headers);
        support::get(&self.stack.url(path), &all).await
    }

    /// What every host of the fake received: the token, valid, and never the client key.
    fn assert_only_tokens_reached_azure(&self) {
        self.assert_tokens(self.azure.seen());
    }

    /// The same, for the requests after the fake first accepted a token (the proxy may ask
    /// before the test has told the fake which key to trust).
    fn assert_only_tokens_reached_azure_once_trusted(&self) {
        let seen = self.azure.seen();
        let first = seen
            .iter()
            .position(|r| r.token_valid)
            .unwrap_or(seen.len());
        for early in &seen[..first] {
            let authorization = early.authorization.as_deref().unwrap_or_default();
            assert!(!authorization.contains(&self.key), "{early:?}");
        }
        self.assert_tokens(seen[first..].to_vec());
    }

    fn assert_tokens(&self, seen: Vec<crate::support::azure::Seen>) {
        assert!(!seen.is_empty());
        for request in &seen {
            assert!(request.token_valid, "{request:?}");
            let authorization = request.authorization.as_deref().unwrap_or_default();
            assert!(!authorization.contains(&self.key), "{request:?}");
        }
        for authorization in self.blob.authorizations() {
            assert_eq!(authorization, None, "a credential reached the blob store");
        }
    }
}

#[tokio::test]
async fn sibling_hosts_are_served_by_name_and_judged_by_their_own_rules() {
    let h = hosts_stack("").await;
    let pkgs = h
        .get(
            "/_host/pkgs.dev.azure.com/contoso/_packaging/feed/pypi/simple/?x=1",
            &[],
        )
        .await;
    assert_eq!(pkgs.status, StatusCode::OK, "{}", pkgs.text());
    assert_eq!(pkgs.json()["host"], "pkgs.dev.azure.com");
    assert_eq!(
        pkgs.json()["target"],
        "/contoso/_packaging/feed/pypi/simple/?x=1"
    );
    let legacy = h
        .get("/_host/contoso.visualstudio.com/_apis/projects", &[])
        .await;
    assert_eq!(legacy.status, StatusCode::OK, "{}", legacy.text());
    assert_eq!(legacy.json()["host"], "contoso.visualstudio.com");
    // The default host by name is the root: judged by the default host's rules.
    let by_name = h
        .get("/_host/DEV.AZURE.COM/contoso/_apis/projects", &[])
        .await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.text());
    assert_eq!(by_name.json()["host"], "dev.azure.com");
    assert_eq!(by_name.json()["target"], "/contoso/_apis/projects");

    let before = h.azure.seen().len();
    // A rule for pkgs is not a rule for the default host, nor for vssps.
    let wrong_host = h.get("/contoso/_packaging/feed/pypi/simple/", &[]).await;
    assert_eq!(wrong_host.status, StatusCode::FORBIDDEN);
    let no_rule = h
        .get("/_host/vssps.dev.azure.com/contoso/_apis/x", &[])
        .await;
    assert_eq!(no_rule.status, StatusCode::FORBIDDEN);
    for host in ["contoso.blob.core.windows.net", "evil.example"] {
        let refused = h.get(&format!("/_host/{host}/c/x"), &[]).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{host}");
        assert!(
            refused.json()["message"]
                .as_str()
                .unwrap_or_default()
                .contains(host)
        );
    }
    assert_eq!(
        h.azure.seen().len(),
        before,
        "nothing refused was forwarded"
    );
    h.assert_only_tokens_reached_azure();
}

#[tokio::test]
async fn absolute_urls_in_bodies_and_redirects_lead_back_to_the_proxy() {
    let h = hosts_stack("").await;
    let proxy = format!("http://{}", h.stack.proxy);
    let areas = h.get("/contoso/_apis/ResourceAreas", &[]).await;
    assert_eq!(areas.status, StatusCode::OK, "{}", areas.text());
    assert_eq!(
        areas.header("content-length"),
        Some(areas.body.len().to_string().as_str()),
        "the length of the rewritten body, not the upstream's"
    );
    let text = areas.text();
    for expected in [
        format!("\"{proxy}/_host/pkgs.dev.azure.com/contoso/\""),
        format!(
            "\"{}\\/_host\\/vsrm.dev.azure.com\\/contoso\\/\"",
            proxy.replace('/', "\\/")
        ),
        format!("\"{proxy}/contoso/\""),
        format!("\"{proxy}/_host/contoso.visualstudio.com/\""),
        format!("\"{}/c/artifact.zip?sig=abc\"", h.blob.url()),
        "\"https://evil.example/x\"".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected} not in {text}");
    }
    assert!(!text.contains("https://pkgs.dev.azure.com"), "{text}");
    // Following a rewritten URL works, with the same key.
    let pkgs_url = format!("{proxy}/_host/pkgs.dev.azure.com/contoso/_packaging/feed/");
    let followed = h.get(pkgs_url.trim_start_matches(&proxy), &[]).await;
    assert_eq!(followed.status, StatusCode::OK, "{}", followed.text());

    // gzip: decoded, rewritten, encoded again.
    let gz = h
        .get(
            "/contoso/_apis/ResourceAreas?gzip",
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gz.header("content-length"),
        None,
        "streamed: its length is not known ahead"
    );
    let mut decoded = String::new();
    async_compression::tokio::bufread::GzipDecoder::new(&gz.body[..])
        .read_to_string(&mut decoded)
        .await
        .expect("a gzip body");
    assert!(
        decoded.contains(&format!("\"{proxy}/_host/pkgs.dev.azure.com/contoso/\"")),
        "{decoded}"
    );

    // Binary bodies pass as they are.
    let binary = h.get("/contoso/_apis/binary", &[]).await;
    assert_eq!(binary.text(), "https://dev.azure.com/ stays in a binary");

    // A redirect to an allowed host comes back through the proxy; one to storage stays as is.
    let to_pkgs = h.get("/contoso/_redirect/pkgs", &[]).await;
    assert_eq!(to_pkgs.status, StatusCode::FOUND);
    assert_eq!(
        to_pkgs.header("location"),
        Some(
            format!("{proxy}/_host/pkgs.dev.azure.com/contoso/_packaging/feed/pypi/simple/")
                .as_str()
        )
    );
    let to_blob = h.get("/contoso/_redirect/blob", &[]).await;
    assert_eq!(
        to_blob.header("location"),
        Some(format!("{}/c/blob.bin?sv=2024&sig=abc", h.blob.url()).as_str())
    );
    h.assert_only_tokens_reached_azure();
}

#[tokio::test]
async fn a_configured_public_url_is_what_urls_become() {
    let h = hosts_stack("public_url = \"https://ado-proxy.example:8443/\"\n").await;
    let areas = h.get("/contoso/_apis/ResourceAreas", &[]).await;
    assert!(
        areas
            .text()
            .contains("\"https://ado-proxy.example:8443/_host/pkgs.dev.azure.com/contoso/\""),
        "{}",
        areas.text()
    );
}

#[tokio::test]
async fn curl_follows_a_storage_redirect_directly_and_without_a_credential() {
    let h = hosts_stack("").await;
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-L", "--fail", "-u"])
        .arg(format!("tool:{}", h.key))
        .arg(h.stack.url("/contoso/_redirect/blob"))
        .output()
        .await
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, BLOB_BYTES);
    assert_eq!(
        h.blob.authorizations(),
        vec![None],
        "fetched once, with no credential"
    );
    h.assert_only_tokens_reached_azure();
}

/// A minimal valid wheel of `demo` 1.0, made by Python's own zipfile.
async fn demo_wheel(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("demo-1.0-py3-none-any.whl");
    let script = r#"
import sys, zipfile
files = {
    "demo/__init__.py": "VERSION = '1.0'\n",
    "demo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
    "demo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files["demo-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in files) + "demo-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(sys.argv[1], "w") as wheel:
    for name, text in files.items():
        wheel.writestr(name, text)
"#;
    python_writes(script, &path).await
}

/// Runs a Python `script` that writes the file named by its first argument, and reads it.
async fn python_writes(script: &str, path: &std::path::Path) -> Vec<u8> {
    let status = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .status()
        .await
        .expect("run python3");
    assert!(status.success(), "python3 writing {}", path.display());
    std::fs::read(path).expect("written")
}

#[tokio::test]
async fn pip_installs_from_a_feed_through_guid_links_and_a_storage_redirect() {
    let h = hosts_stack("").await;
    let work = tempfile::tempdir().expect("temp dir");
    let wheel = demo_wheel(work.path()).await;
    h.blob.store("demo-1.0-py3-none-any.whl", wheel.clone());
    let index = format!(
        "http://tool:{}@{}/_host/pkgs.dev.azure.com/contoso/_packaging/internal/pypi/simple/",
        h.key, h.stack.proxy
    );
    let target = work.path().join("site-packages");
    let output = tokio::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-deps",
            "--no-cache-dir",
        ])
        .args([
            "--disable-pip-version-check",
            "--index-url",
            &index,
            "--target",
        ])
        .arg(&target)
        .arg("demo==1.0")
        .env("PIP_CONFIG_FILE", "/dev/null")
        // Anything not on loopback would go to a dead proxy, never to a public index.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
        .output()
        .await
        .expect("run pip");
    assert!(
        output.status.success(),
        "pip: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let installed = std::fs::read_to_string(target.join("demo/__init__.py")).expect("installed");
    assert_eq!(
        installed, "VERSION = '1.0'\n",
        "the wheel arrived whole and was installed"
    );
    let seen = h.azure.seen();
    assert!(
        seen.iter().any(|r| r.host == "pkgs.dev.azure.com"
            && r.target.starts_with(&format!(
                "/contoso/_packaging/{}/",
                crate::support::azure::FEED_ID
            ))),
        "pip followed the rewritten GUID link through the proxy: {seen:?}"
    );
    h.assert_only_tokens_reached_azure();
}

/// An npm tarball of `demo` 1.0.0 (`package/package.json` and `package/index.js`), by Python's
/// tarfile.
async fn demo_tarball(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("demo-1.0.0.tgz");
    let script = r#"
import io, sys, tarfile
files = {
    "package/package.json": '{"name":"demo","version":"1.0.0","main":"index.js"}\n',
    "package/index.js": "module.exports = 'demo 1.0.0';\n",
}
with tarfile.open(sys.argv[1], "w:gz") as tgz:
    for name, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tgz.addfile(info, io.BytesIO(data))
"#;
    python_writes(script, &path).await
}

#[tokio::test]
async fn npm_installs_from_a_feed_through_an_absolute_tarball_url() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let h = hosts_stack("").await;
    let work = tempfile::tempdir().expect("temp dir");
    let tarball = demo_tarball(work.path()).await;
    h.blob.store("demo-1.0.0.tgz", tarball.clone());
    let integrity = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tarball))
    );
    let feed = crate::support::azure::FEED_ID;
    h.azure.serve(
        "pkgs.dev.azure.com",
        "/contoso/_packaging/internal/npm/registry/demo",
        "application/json",
        serde_json::json!({
            "name": "demo",
            "dist-tags": { "latest": "1.0.0" },
            "versions": { "1.0.0": {
                "name": "demo",
                "version": "1.0.0",
                "dist": {
                    "tarball": format!("https://pkgs.dev.azure.com/contoso/_packaging/{feed}/npm/registry/demo/-/demo-1.0.0.tgz"),
                    "integrity": integrity,
                }
            }}
        })
        .to_string(),
    );
    let project = work.path().join("app");
    std::fs::create_dir(&project).expect("project dir");
    std::fs::write(
        project.join("package.json"),
        r#"{"name":"app","version":"1.0.0","private":true}"#,
    )
    .expect("package.json");
    let proxy = h.stack.proxy;
    let npmrc = work.path().join("npmrc");
    std::fs::write(
        &npmrc,
        format!(
            "registry=http://{proxy}/_host/pkgs.dev.azure.com/contoso/_packaging/internal/npm/registry/\n\
             //{proxy}/:username=tool\n//{proxy}/:_password={}\n",
            base64::engine::general_purpose::STANDARD.encode(&h.key)
        ),
    )
    .expect("npmrc");
    let output = tokio::process::Command::new("npm")
        .args([
            "install",
            "demo",
            "--no-audit",
            "--no-fund",
            "--loglevel=warn",
        ])
        .arg("--userconfig")
        .arg(&npmrc)
        .arg("--globalconfig")
        .arg(work.path().join("no-global-npmrc"))
        .arg("--cache")
        .arg(work.path().join("cache"))
        .current_dir(&project)
        // Anything not on loopback would go to a dead proxy, never to a public registry.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
        .env("npm_config_update_notifier", "false")
        .output()
        .await
        .expect("run npm");
    assert!(
        output.status.success(),
        "npm: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let installed =
        std::fs::read_to_string(project.join("node_modules/demo/index.js")).expect("installed");
    assert!(installed.contains("demo 1.0.0"));
    let seen = h.azure.seen();
    assert!(
        seen.iter().any(|r| r
            .target
            .contains(&format!("/_packaging/{feed}/npm/registry/demo/-/"))),
        "npm fetched the tarball through the proxy: {seen:?}"
    );
    h.assert_only_tokens_reached_azure();
}

#[tokio::test]
async fn twine_uploads_to_a_feed_through_the_proxy() {
    let h = hosts_stack("").await;
    let work = tempfile::tempdir().expect("temp dir");
    let wheel = demo_wheel(work.path()).await;
    let upload = "/contoso/_packaging/internal/pypi/upload/";
    h.azure
        .serve("pkgs.dev.azure.com", upload, "text/plain", "OK");
    let output = tokio::process::Command::new("python3")
        .args([
            "-m",
            "twine",
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
        ])
        .arg("--repository-url")
        .arg(format!(
            "http://{}/_host/pkgs.dev.azure.com{upload}",
            h.stack.proxy
        ))
        .args(["-u", "tool", "-p", &h.key])
        .arg(work.path().join("demo-1.0-py3-none-any.whl"))
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
        .output()
        .await
        .expect("run twine");
    assert!(
        output.status.success(),
        "twine: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen = h.azure.seen();
    let uploaded = seen
        .iter()
        .find(|r| r.method == "POST" && r.host == "pkgs.dev.azure.com" && r.target == upload)
        .expect("the upload reached the feed");
    let wheel_in_body = uploaded
        .body
        .windows(wheel.len())
        .any(|window| window == wheel.as_slice());
    assert!(
        wheel_in_body,
        "the wheel arrived whole in the multipart body"
    );
    h.assert_only_tokens_reached_azure();
}

/// NuGet's v3 protocol, walked as NuGet walks it (no v3 client installs here): the service
/// index, its `PackageBaseAddress` (absolute, on the project's and feed's GUIDs), the versions,
/// then the package, which redirects to storage. Basic only, as NuGet sends.
#[tokio::test]
async fn the_nuget_v3_walk_stays_on_the_proxy_until_storage() {
    let h = hosts_stack("").await;
    let feed = crate::support::azure::FEED_ID;
    let project = "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c";
    let base = format!("https://pkgs.dev.azure.com/contoso/{project}/_packaging/{feed}/nuget/v3");
    h.azure.serve(
        "pkgs.dev.azure.com",
        "/contoso/_packaging/internal/nuget/v3/index.json",
        "application/json",
        serde_json::json!({
            "version": "3.0.0",
            "resources": [
                { "@id": format!("{base}/flat2/"), "@type": "PackageBaseAddress/3.0.0" },
                { "@id": format!("{base}/registrations2-semver2/"), "@type": "RegistrationsBaseUrl/3.6.0" },
            ]
        })
        .to_string(),
    );
    let flat = format!("/contoso/{project}/_packaging/{feed}/nuget/v3/flat2/demo");
    h.azure.serve(
        "pkgs.dev.azure.com",
        &format!("{flat}/index.json"),
        "application/json",
        r#"{"versions":["1.0.0"]}"#,
    );
    h.blob.store("demo.1.0.0.nupkg", b"PK nupkg bytes".to_vec());
    h.azure.serve_redirect(
        "pkgs.dev.azure.com",
        &format!("{flat}/1.0.0/demo.1.0.0.nupkg"),
        &format!("{}/c/demo.1.0.0.nupkg?sv=2024&sig=abc", h.blob.url()),
    );

    let index = h
        .get(
            "/_host/pkgs.dev.azure.com/contoso/_packaging/internal/nuget/v3/index.json",
            &[],
        )
        .await;
    assert_eq!(index.status, StatusCode::OK, "{}", index.text());
    let package_base = index.json()["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["@type"] == "PackageBaseAddress/3.0.0")
        .and_then(|r| r["@id"].as_str())
        .expect("PackageBaseAddress")
        .to_owned();
    let proxy = format!("http://{}", h.stack.proxy);
    let rest = package_base
        .strip_prefix(&proxy)
        .unwrap_or_else(|| panic!("{package_base} does not lead back to the proxy"));
    let versions = h.get(&format!("{rest}demo/index.json"), &[]).await;
    assert_eq!(versions.json()["versions"][0], "1.0.0");
    let nupkg = h
        .get(&format!("{rest}demo/1.0.0/demo.1.0.0.nupkg"), &[])
        .await;
    assert_eq!(nupkg.status, StatusCode::FOUND);
    let location = nupkg.header("location").expect("redirect").to_owned();
    assert!(
        location.starts_with(&h.blob.url()),
        "storage, as it is: {location}"
    );
    // NuGet follows it itself, with no credential.
    let blob = support::get(&location, &[]).await;
    assert_eq!(blob.body.as_ref(), b"PK nupkg bytes");
    h.assert_only_tokens_reached_azure();
}

/// Debian's Maven and its dependency plugin (Maven cannot download plugins here): a throwaway
/// local repository seeded from Debian's, and a mirror of everything at the feed through the
/// proxy, the client key as the server's password.
#[tokio::test]
async fn maven_fetches_an_artifact_from_a_feed_through_the_proxy() {
    let h = hosts_stack("").await;
    let work = tempfile::tempdir().expect("temp dir");
    let local = work.path().join("repository");
    std::fs::create_dir(&local).expect("local repository");
    for entry in std::fs::read_dir("/usr/share/maven-repo").expect("Debian's Maven repository") {
        let entry = entry.expect("entry");
        std::os::unix::fs::symlink(entry.path(), local.join(entry.file_name())).expect("link");
    }
    let plugin_version =
        std::fs::read_dir("/usr/share/maven-repo/org/apache/maven/plugins/maven-dependency-plugin")
            .expect("libmaven-dependency-plugin-java")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .max()
            .expect("a plugin version");
    let feed = "/contoso/_packaging/internal/maven/v1";
    let artifact = format!("{feed}/ado/test/demo/1.0/demo-1.0");
    h.azure.serve(
        "pkgs.dev.azure.com",
        &format!("{artifact}.pom"),
        "application/xml",
        "<project><modelVersion>4.0.0</modelVersion><groupId>ado.test</groupId>\
         <artifactId>demo</artifactId><version>1.0</version></project>",
    );
    h.blob.store("demo-1.0.jar", b"PK jar bytes".to_vec());
    h.azure.serve_redirect(
        "pkgs.dev.azure.com",
        &format!("{artifact}.jar"),
        &format!("{}/c/demo-1.0.jar?sv=2024&sig=abc", h.blob.url()),
    );
    let settings = work.path().join("settings.xml");
    std::fs::write(
        &settings,
        format!(
            "<settings><servers><server><id>feed</id><username>tool</username>\
             <password>{key}</password></server></servers>\
             <mirrors><mirror><id>feed</id><mirrorOf>*</mirrorOf>\
             <url>http://{proxy}/_host/pkgs.dev.azure.com{feed}</url></mirror></mirrors></settings>",
            key = h.key,
            proxy = h.stack.proxy,
        ),
    )
    .expect("settings.xml");
    let output = tokio::process::Command::new("mvn")
        .args(["-B", "-q", "-s"])
        .arg(&settings)
        .arg(format!("-Dmaven.repo.local={}", local.display()))
        .arg(format!(
            "org.apache.maven.plugins:maven-dependency-plugin:{plugin_version}:get"
        ))
        .args(["-Dartifact=ado.test:demo:1.0", "-Dtransitive=false"])
        .current_dir(work.path())
        .env("MAVEN_OPTS", "-Dhttp.nonProxyHosts=127.0.0.1|127.0.0.2")
        .output()
        .await
        .expect("run mvn");
    assert!(
        output.status.success(),
        "mvn: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let jar = std::fs::read(local.join("ado/test/demo/1.0/demo-1.0.jar")).expect("downloaded");
    assert_eq!(jar, b"PK jar bytes");
    h.assert_only_tokens_reached_azure();
}

/// An ApiResourceLocation, as `OPTIONS {url}/_apis` lists them.
fn location(id: &str, area: &str, resource: &str, route: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "area": area, "resourceName": resource, "routeTemplate": route,
        "routeName": resource, "resourceVersion": 1,
        "minVersion": "1.0", "maxVersion": "7.1", "releasedVersion": "7.1",
    })
}

/// The `azure-devops` Python SDK asks where each area lives (OPTIONS for the routes, then
/// Resource Areas), gets an absolute URL on another host, and calls it: through the proxy, since
/// the URL it got names the proxy.
#[tokio::test]
async fn the_python_sdk_calls_an_area_it_discovers_on_another_host() {
    let h = hosts_stack("").await;
    let collection = |value: serde_json::Value| {
        let count = value.as_array().map_or(0, Vec::len);
        serde_json::json!({ "count": count, "value": value }).to_string()
    };
    h.azure.serve(
        "dev.azure.com",
        "/fabrikam/_apis",
        "application/json",
        collection(serde_json::json!([location(
            "e81700f7-3be2-46de-8624-2eb35882fcaa",
            "Location",
            "ResourceAreas",
            "_apis/{resource}/{areaId}",
        )])),
    );
    h.azure.serve(
        "dev.azure.com",
        "/fabrikam/_apis/ResourceAreas",
        "application/json",
        collection(serde_json::json!([{
            "id": "efc2f575-36ef-48e9-b672-0c6fb4a48ac5",
            "name": "Release",
            "locationUrl": "https://vsrm.dev.azure.com/fabrikam/",
        }])),
    );
    h.azure.serve(
        "vsrm.dev.azure.com",
        "/fabrikam/_apis",
        "application/json",
        collection(serde_json::json!([location(
            "d8f96f24-8ea7-4cb6-baab-2df8fc515665",
            "Release",
            "definitions",
            "{project}/_apis/{area}/{resource}/{definitionId}",
        )])),
    );
    h.azure.serve(
        "vsrm.dev.azure.com",
        "/fabrikam/web/_apis/Release/definitions",
        "application/json",
        collection(serde_json::json!([{ "id": 7, "name": "deploy-web" }])),
    );
    let work = tempfile::tempdir().expect("temp dir");
    let script = r#"
import sys
from azure.devops.connection import Connection
from msrest.authentication import BasicAuthentication
connection = Connection(base_url=sys.argv[1], creds=BasicAuthentication("tool", sys.argv[2]))
definitions = connection.clients.get_release_client().get_release_definitions(project="web")
print("|".join(d.name for d in definitions))
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(format!("http://{}/fabrikam", h.stack.proxy))
        .arg(&h.key)
        .env("HOME", work.path())
        .env("AZURE_DEVOPS_CACHE_DIR", work.path().join("cache"))
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
        .output()
        .await
        .expect("run python3");
    assert!(
        output.status.success(),
        "sdk: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "deploy-web");
    let seen = h.azure.seen();
    assert!(
        seen.iter().any(|r| r.host == "vsrm.dev.azure.com"
            && r.target
                .starts_with("/fabrikam/web/_apis/Release/definitions")),
        "the SDK reached the Release area on its own host, through the proxy: {seen:?}"
    );
    h.assert_only_tokens_reached_azure();
}

/// A rule naming a feed admits its calls by name, and by its GUIDs once the proxy has asked the
/// Feed Management API for them (with the token), and no other feed's.
#[tokio::test]
async fn a_feed_rule_admits_the_feed_by_name_and_by_guid_and_no_other_feed() {
    let h = hosts_stack_with("", r#"{ feed = "contoso/internal", methods = ["GET"] }"#).await;
    let feed = crate::support::azure::FEED_ID;
    h.azure.serve(
        "feeds.dev.azure.com",
        "/contoso/_apis/packaging/feeds/internal",
        "application/json",
        serde_json::json!({ "id": feed, "name": "internal", "project": null }).to_string(),
    );
    let by_name = h
        .get(
            "/_host/pkgs.dev.azure.com/contoso/_packaging/internal/pypi/simple/demo/",
            &[],
        )
        .await;
    assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.text());
    // Once the GUID is known (the lookup retries until the fake trusts the token).
    let by_guid = format!(
        "/_host/pkgs.dev.azure.com/contoso/_packaging/{feed}/pypi/download/demo/1.0/demo-1.0-py3-none-any.whl"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = h.get(&by_guid, &[]).await;
        if reply.status == StatusCode::FOUND {
            break;
        }
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert!(
            std::time::Instant::now() < deadline,
            "the feed's GUID was never learned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for other in [
        "/_host/pkgs.dev.azure.com/contoso/_packaging/other/pypi/simple/demo/".to_string(),
        "/_host/pkgs.dev.azure.com/contoso/_packaging/11111111-2222-3333-4444-555555555555/pypi/simple/".to_string(),
        "/_host/pkgs.dev.azure.com/fabrikam/_packaging/internal/pypi/simple/".to_string(),
        "/contoso/_packaging/internal/pypi/simple/".to_string(),
    ] {
        assert_eq!(h.get(&other, &[]).await.status, StatusCode::FORBIDDEN, "{other}");
    }
    assert!(
        h.azure
            .seen()
            .iter()
            .any(|r| r.host == "feeds.dev.azure.com" && r.token_valid),
        "the lookup went to the Feed Management API with the identity's token"
    );
    h.assert_only_tokens_reached_azure_once_trusted();
}

/// A token Azure DevOps refuses on a sibling host is handled as on the default one: renewed, the
/// request replayed once, and neither the 401 nor its `WWW-Authenticate` reaches the client.
#[tokio::test]
async fn a_token_refused_on_a_sibling_host_is_renewed_and_the_request_replayed() {
    let h = hosts_stack("").await;
    let path = "/_host/pkgs.dev.azure.com/contoso/_packaging/internal/pypi/simple/x/";
    assert_eq!(h.get(path, &[]).await.status, StatusCode::OK);
    let issued = h.stack.entra.tokens_issued();
    h.azure.revoke_seen_tokens();
    let reply = h.get(path, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), None);
    assert!(
        h.stack.entra.tokens_issued() > issued,
        "a new token was fetched"
    );
    let on_pkgs: Vec<_> = h
        .azure
        .seen()
        .into_iter()
        .filter(|r| r.host == "pkgs.dev.azure.com")
        .collect();
    let last_two = &on_pkgs[on_pkgs.len() - 2..];
    assert!(
        !last_two[0].token_valid && last_two[1].token_valid,
        "{last_two:?}"
    );
    assert_ne!(
        last_two[0].authorization, last_two[1].authorization,
        "replayed with the new token"
    );
}
