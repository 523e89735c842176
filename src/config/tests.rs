//! Configuration loading and validation, end to end from TOML and the environment.

use http::uri::Scheme;

use super::*;

const MINIMAL: &str = r#"
    [identities.default]
    tenant_id = "00000000-0000-0000-0000-000000000000"
    client_id = "11111111-1111-1111-1111-111111111111"
    credential = { kind = "client_secret", secret = "s3cr3t-value" }
"#;

#[test]
fn defaults_fill_everything_but_the_identity() {
    let config = Config::from_toml(MINIMAL).expect("valid");
    assert_eq!(
        config.listen.address,
        "127.0.0.1:8080".parse().expect("addr")
    );
    assert_eq!(
        config.admin.address,
        "127.0.0.1:9090".parse().expect("addr")
    );
    assert_eq!(config.upstream.authority.as_str(), "dev.azure.com");
    assert_eq!(config.upstream.scheme, Scheme::HTTPS);
    let identity = &config.identities[0];
    assert_eq!(identity.scope, AZURE_DEVOPS_SCOPE);
    let Credential::App { app, .. } = &identity.credential else {
        panic!("an app registration")
    };
    assert_eq!(
        app.token_endpoint(),
        "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"
    );
}

#[test]
fn debug_output_hides_the_secret() {
    let config = Config::from_toml(MINIMAL).expect("valid");
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cr3t-value"), "{printed}");
}

fn error_of(toml: &str) -> String {
    Config::from_toml(toml)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let message = error_of(&format!("{MINIMAL}\n[upstream]\nurll = \"https://x\""));
    assert!(message.contains("urll"), "{message}");
}

#[test]
fn plain_http_is_only_for_loopback() {
    let message = error_of(&format!(
        "{MINIMAL}\n[upstream]\nurl = \"http://dev.azure.com\""
    ));
    assert!(
        message.contains("upstream.url") && message.contains("loopback"),
        "{message}"
    );
    let ok = Config::from_toml(&format!(
        "{MINIMAL}\n[upstream]\nurl = \"http://127.0.0.1:1234\""
    ));
    assert!(ok.is_ok());
    let message = error_of(&MINIMAL.replace(
        "tenant_id",
        "authority = \"http://login.example.com\"\ntenant_id",
    ));
    assert!(
        message.contains("identities.default.authority"),
        "{message}"
    );
}

#[test]
fn upstream_with_a_path_is_refused() {
    let message = error_of(&format!(
        "{MINIMAL}\n[upstream]\nurl = \"https://dev.azure.com/contoso\""
    ));
    assert!(message.contains("upstream.url"), "{message}");
}

const OPEN: &str = "[inbound]\nmode = \"open\"\nallow = [{ methods = [\"*\"], path = \"/**\" }]\n";

#[test]
fn open_mode_stays_on_loopback_unless_explicitly_allowed() {
    let message = error_of(&format!(
        "{MINIMAL}\n{OPEN}[listen]\naddress = \"0.0.0.0:8080\""
    ));
    assert!(
        message.contains("listen.address") && message.contains("loopback"),
        "{message}"
    );
    let config = Config::from_toml(&format!(
        "{MINIMAL}\n{OPEN}allow_open_on_non_loopback = true\n[listen]\naddress = \"0.0.0.0:8080\"\n{PUBLIC}"
    ))
    .expect("explicitly allowed");
    assert!(config.inbound.open_beyond_loopback);
    let keys = Config::from_toml(&format!(
        "{MINIMAL}\n[listen]\naddress = \"0.0.0.0:8080\"\n{PUBLIC}"
    ));
    assert!(keys.is_ok(), "keys mode may listen anywhere");
}

const PUBLIC: &str = "public_url = \"https://ado-proxy.example:8443/\"\n";

#[test]
fn a_listener_off_loopback_needs_its_public_url() {
    let message = error_of(&format!("{MINIMAL}\n[listen]\naddress = \"0.0.0.0:8080\""));
    assert!(message.contains("listen.public_url"), "{message}");
    let config = Config::from_toml(&format!(
        "{MINIMAL}\n[listen]\naddress = \"0.0.0.0:8080\"\n{PUBLIC}"
    ))
    .expect("with public_url");
    assert_eq!(
        config.listen.public_url.as_deref(),
        Some("https://ado-proxy.example:8443"),
        "without the trailing slash"
    );
    for bad in [
        "ado-proxy.example",
        "ftp://x.example",
        "https://x.example/base",
        "https://u:p@x.example",
    ] {
        let message = error_of(&format!("{MINIMAL}\n[listen]\npublic_url = \"{bad}\""));
        assert!(message.contains("listen.public_url"), "{bad}: {message}");
    }
}

#[test]
fn hosts_resolve_and_rule_hosts_are_checked() {
    let config = Config::from_toml(MINIMAL).expect("defaults");
    for host in [
        "dev.azure.com",
        "pkgs.dev.azure.com",
        "contoso.pkgs.visualstudio.com",
    ] {
        assert!(config.upstream.hosts.allows(host), "{host}");
    }
    for host in [
        "contoso.blob.core.windows.net",
        "evil.example",
        "x.vsassets.io",
    ] {
        assert!(!config.upstream.hosts.allows(host), "{host}");
    }
    let message = error_of(&format!("{MINIMAL}\n[upstream]\nhosts = [\"*\"]"));
    assert!(message.contains("upstream.hosts[0]"), "{message}");
    let message = error_of(&format!(
        "{MINIMAL}\n[upstream.resolve]\n\"pkgs.dev.azure.com\" = \"localhost\""
    ));
    assert!(
        message.contains("upstream.resolve.pkgs.dev.azure.com"),
        "{message}"
    );
    let config = Config::from_toml(&format!(
        "{MINIMAL}\n[upstream.resolve]\n\"PKGS.dev.azure.com\" = \"127.0.0.1:8443\""
    ))
    .expect("resolve");
    assert_eq!(
        config.upstream.resolve,
        vec![(
            "pkgs.dev.azure.com".to_string(),
            "127.0.0.1:8443".parse().expect("addr")
        )]
    );
    let message = error_of(&format!(
        "{MINIMAL}\n[[clients]]\nname = \"c\"\nkey_sha256 = \"{}\"\nallow = [{{ host = \"*.com\", methods = [\"GET\"], path = \"/**\" }}]",
        "ab".repeat(32)
    ));
    assert!(
        message.contains("clients[0].allow[0]") || message.contains("allow[0]"),
        "{message}"
    );
}

#[test]
fn open_mode_needs_rules_and_keys_mode_refuses_them() {
    let message = error_of(&format!("{MINIMAL}\n[inbound]\nmode = \"open\""));
    assert!(message.contains("inbound.allow"), "{message}");
    let message = error_of(&format!(
        "{MINIMAL}\n[inbound]\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]"
    ));
    assert!(message.contains("inbound.allow"), "{message}");
}

const CLIENT: &str = "[[clients]]\nname = \"ci-bot\"\nkey_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nallow = [{ methods = [\"GET\"], path = \"/contoso/**\" }]\n";

#[test]
fn clients_are_checked_for_names_hashes_identities_and_rules() {
    let config = Config::from_toml(&format!("{MINIMAL}\n{CLIENT}")).expect("valid");
    assert_eq!(config.clients[0].identity, "default");
    let twice = format!("{MINIMAL}\n{CLIENT}{}", CLIENT.replace("ci-bot", "other"));
    assert!(error_of(&twice).contains("same key as client `ci-bot`"));
    let same_name = format!("{MINIMAL}\n{CLIENT}{}", CLIENT.replace("9f86", "0f86"));
    assert!(error_of(&same_name).contains("used by two clients"));
    let bad_hash = format!("{MINIMAL}\n{}", CLIENT.replace("9f86d0", "zz"));
    assert!(error_of(&bad_hash).contains("clients[0].key_sha256"));
    let missing_identity = format!("{MINIMAL}\n{CLIENT}identity = \"nope\"\n");
    assert!(error_of(&missing_identity).contains("clients[0].identity"));
    // Keys mode needs no `default` identity when every client names another one.
    let named_only = format!(
        "{}\n{CLIENT}identity = \"ci\"\n",
        MINIMAL.replace("identities.default", "identities.ci")
    );
    let config = Config::from_toml(&named_only).expect("valid without a default identity");
    assert_eq!(config.identities.len(), 1);
    let open = format!(
        "{}\n[inbound]\nmode = \"open\"\nallow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n",
        MINIMAL.replace("identities.default", "identities.ci")
    );
    assert!(error_of(&open).contains("[identities.default]"));
    let bad_rule = format!("{MINIMAL}\n{}", CLIENT.replace("/contoso/**", "contoso/**"));
    let message = error_of(&bad_rule);
    assert!(
        message.contains("clients[0].allow[0]") && message.contains("must start with '/'"),
        "{message}"
    );
}

#[test]
fn bad_values_name_key_and_source() {
    let message = error_of(&format!("{MINIMAL}\n[listen]\naddress = \"localhost\""));
    assert!(
        message.contains("listen.address") && message.contains("TOML"),
        "{message}"
    );
    let message = error_of(&format!(
        "{MINIMAL}\n[upstream]\nresponse_timeout = \"soon\""
    ));
    assert!(
        message.contains("response_timeout") && message.contains("soon"),
        "{message}"
    );
    let message = error_of(&MINIMAL.replace("client_secret", "password"));
    assert!(message.contains("password"), "{message}");
}

#[test]
fn missing_identity_fields_say_which_variable_fills_them() {
    figment::Jail::expect_with(|_| {
        let message = error_of("");
        assert!(
            message.contains("identities.default.credential")
                && message.contains("AZURE_CLIENT_SECRET"),
            "{message}"
        );
        let message = error_of(
            "[identities.default]\ncredential = { kind = \"client_secret\", secret = \"x\" }",
        );
        assert!(message.contains("AZURE_TENANT_ID"), "{message}");
        Ok(())
    });
}

#[test]
fn in_memory_configuration_does_not_read_the_process_environment() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("ADO_AUTH_PROXY_LISTEN__ADDRESS", "127.0.0.1:7001");
        jail.set_env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/");
        jail.set_env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token");
        jail.set_env("IDENTITY_HEADER", "header-secret-value");
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(config.listen.address.port(), 8080);
        let Credential::App { app, .. } = &config.identities[0].credential else {
            panic!("an app registration")
        };
        assert_eq!(app.authority, DEFAULT_AUTHORITY);
        let config = Config::from_toml(
            "[identities.default]\ncredential = { kind = \"managed_identity\" }\n",
        )
        .expect("a system-assigned managed identity");
        let Credential::Managed(managed) = &config.identities[0].credential else {
            panic!("managed identity")
        };
        assert_eq!(managed.endpoint, IMDS_ENDPOINT);

        jail.set_env("AZURE_TENANT_ID", "t");
        jail.set_env("AZURE_CLIENT_ID", "c");
        jail.set_env("AZURE_CLIENT_SECRET", "from-the-environment");
        let message = error_of("");
        assert!(
            message.contains("identities.default.credential"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn environment_layers_over_file_and_azure_variables_fill_the_default_identity() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "proxy.toml",
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[listen]\naddress = \"127.0.0.1:7000\"",
        )?;
        jail.set_env("ADO_AUTH_PROXY_LISTEN__ADDRESS", "127.0.0.1:7001");
        jail.set_env("ADO_AUTH_PROXY_CONFIG", "ignored-by-the-loader");
        jail.set_env("AZURE_TENANT_ID", "contoso.onmicrosoft.com");
        jail.set_env("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222");
        jail.set_env("AZURE_CLIENT_SECRET", "from-the-environment");
        jail.set_env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/");
        let config = Config::load(Some(Path::new("proxy.toml"))).expect("valid");
        assert_eq!(config.listen.address.port(), 7001);
        let identity = &config.identities[0];
        assert_eq!(identity.tenant_id(), Some("contoso.onmicrosoft.com"));
        let Credential::App { app, proof } = &identity.credential else {
            panic!("an app registration")
        };
        assert_eq!(app.authority, "https://login.microsoftonline.us");
        assert!(matches!(
            proof,
            Proof::Secret(SecretSource::Value(s)) if s.expose() == "from-the-environment"
        ));
        Ok(())
    });
}

#[test]
fn a_numeric_secret_from_the_environment_is_not_quoted_in_errors() {
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CREDENTIAL__KIND",
            "client_secret",
        );
        jail.set_env(
            "ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CREDENTIAL__SECRET",
            "987654321",
        );
        jail.set_env("ADO_AUTH_PROXY_IDENTITIES__DEFAULT__TENANT_ID", "t");
        jail.set_env("ADO_AUTH_PROXY_IDENTITIES__DEFAULT__CLIENT_ID", "c");
        let config = Config::load(None).expect("a numeric secret is still a secret");
        assert!(!format!("{config:?}").contains("987654321"));
        Ok(())
    });
}

#[test]
fn azure_variables_pick_the_credential_kind_as_the_sdks_do() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("token", "a.b.c")?;
        jail.set_env("AZURE_TENANT_ID", "t");
        jail.set_env("AZURE_CLIENT_ID", "c");
        jail.set_env("AZURE_FEDERATED_TOKEN_FILE", "token");
        let config = Config::load(None).expect("workload identity from the environment");
        assert!(matches!(
            &config.identities[0].credential,
            Credential::App { proof: Proof::Federated(FederatedSource::File(f)), .. } if f == Path::new("token")
        ));

        jail.set_env("AZURE_FEDERATED_TOKEN_FILE", "");
        jail.set_env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token");
        jail.set_env("IDENTITY_HEADER", "header-secret-value");
        let config = Config::load(None).expect("App Service managed identity");
        let identity = &config.identities[0];
        assert_eq!(
            identity.client_id(),
            Some("c"),
            "AZURE_CLIENT_ID picks a user-assigned identity"
        );
        assert_eq!(identity.tenant_id(), None);
        assert!(matches!(
            &identity.credential,
            Credential::Managed(ManagedIdentity {
                protocol: ManagedProtocol::AppService { .. },
                ..
            })
        ));
        assert!(!format!("{config:?}").contains("header-secret-value"));
        Ok(())
    });
}

#[test]
fn a_named_managed_identity_uses_the_platform_endpoint_too() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token");
        let toml = "[identities.vm]\ncredential = { kind = \"managed_identity\" }\n\
                    [inbound]\nmode = \"keys\"\n";
        let message = Config::from_toml_with_env(toml, &Env::var)
            .expect_err("an endpoint without its header")
            .to_string();
        assert!(
            message.contains("identities.vm") && message.contains("Azure Arc"),
            "{message}"
        );

        jail.set_env("IDENTITY_HEADER", "header-secret-value");
        let config =
            Config::from_toml_with_env(toml, &Env::var).expect("App Service managed identity");
        let Credential::Managed(managed) = &config.identities[0].credential else {
            panic!("managed identity")
        };
        assert_eq!(managed.endpoint, "http://localhost:42356/msi/token");
        assert!(matches!(
            managed.protocol,
            ManagedProtocol::AppService { .. }
        ));
        Ok(())
    });
}

#[test]
fn credential_kinds_are_checked_where_they_are_written() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("cert.pem", "not checked here")?;
        let identity = |credential: &str| {
            let tenant = if credential.contains("managed_identity") {
                ""
            } else {
                "tenant_id = \"t\"\n"
            };
            format!("[identities.default]\n{tenant}client_id = \"c\"\ncredential = {credential}\n")
        };
        let config = Config::from_toml(&identity(
            r#"{ kind = "client_certificate", certificate_file = "cert.pem", send_x5c = true, algorithm = "RS256" }"#,
        ))
        .expect("certificate credential");
        assert!(matches!(
            &config.identities[0].credential,
            Credential::App {
                proof: Proof::Certificate(CertificateFiles {
                    send_x5c: true,
                    algorithm: AssertionAlgorithm::Rs256,
                    ..
                }),
                ..
            }
        ));
        for (credential, key) in [
            (
                r#"{ kind = "client_certificate" }"#,
                "credential.certificate_file",
            ),
            (
                r#"{ kind = "client_certificate", certificate_file = "missing.pem" }"#,
                "credential.certificate_file",
            ),
            (
                r#"{ kind = "client_certificate", certificate_file = "cert.pem", algorithm = "ES256" }"#,
                "credential.algorithm",
            ),
            (r#"{ kind = "workload_identity" }"#, "credential.token_file"),
            (
                r#"{ kind = "workload_identity", source = "github_actions" }"#,
                "ACTIONS_ID_TOKEN_REQUEST_URL",
            ),
            (
                r#"{ kind = "workload_identity", source = "gitlab" }"#,
                "credential.source",
            ),
            (
                r#"{ kind = "managed_identity", endpoint = "http://metadata.example.com/token" }"#,
                "credential.endpoint",
            ),
            (
                r#"{ kind = "managed_identity", endpoint = "http://169.254.169.254/x?api-version=1" }"#,
                "credential.endpoint",
            ),
            (
                r#"{ kind = "managed_identity", endpoint = "/metadata/identity/oauth2/token" }"#,
                "credential.endpoint",
            ),
            (r#"{ kind = "password" }"#, "password"),
        ] {
            let message = error_of(&identity(credential));
            assert!(message.contains(key), "{credential}: {message}");
        }
        let config = Config::from_toml(
            "[identities.default]\ncredential = { kind = \"managed_identity\" }\n",
        )
        .expect("a system-assigned managed identity needs no tenant or client id");
        let Credential::Managed(managed) = &config.identities[0].credential else {
            panic!("managed identity")
        };
        assert_eq!(managed.endpoint, IMDS_ENDPOINT);
        assert!(matches!(managed.protocol, ManagedProtocol::Imds));
        assert_eq!(
            config.identities[0].resource(),
            "499b84ac-1321-427f-aa17-267ca6975798"
        );
        let message = error_of(
            "[identities.default]\ntenant_id = \"t\"\ncredential = { kind = \"managed_identity\" }\n",
        );
        assert!(
            message.contains("identities.default.tenant_id"),
            "{message}"
        );
        let message = error_of(&format!(
            "{}[upstream]\nmax_replay_body_bytes = 1000000000\n",
            identity(r#"{ kind = "managed_identity" }"#)
        ));
        assert!(
            message.contains("upstream.max_replay_body_bytes"),
            "{message}"
        );
        Ok(())
    });
}

proptest::proptest! {
    /// Any value under any key of any section: validation answers Ok or an error, never a panic,
    /// and an error names the key or its section.
    #[test]
    fn any_key_and_value_is_loaded_or_refused_with_a_reason(
        section in proptest::prop_oneof![
            proptest::strategy::Just("listen"), proptest::strategy::Just("admin"),
            proptest::strategy::Just("upstream"), proptest::strategy::Just("inbound"),
            proptest::strategy::Just("identities.default"), proptest::strategy::Just("upstream.resolve"),
        ],
        key in "[a-z_]{1,24}",
        value in proptest::prop_oneof![
            "\"\\PC{0,40}\"",
            "-?[0-9]{1,12}",
            proptest::strategy::Just("true".to_string()),
            "\\[\"[a-z*./:]{0,20}\"\\]",
            "\\{ [a-z]{1,8} = \"[a-z]{0,8}\" \\}",
        ],
    ) {
        let toml = format!("{MINIMAL}\n[{section}]\n{key} = {value}\n");
        if let Err(error) = Config::from_toml(&toml) {
            let message = error.to_string();
            let last = section.rsplit('.').next().unwrap_or(section);
            proptest::prop_assert!(
                message.contains(key.as_str()) || message.contains(last),
                "names neither `{}` nor `{}`: {}", key, section, message
            );
        }
    }
}
