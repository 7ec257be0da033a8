//! The settings walden knows: WAL-G's names, their defaults, and which of
//! them are secrets that must never be printed.

/// Defaults of WAL-G's PostgreSQL binary (its `CommonDefaultConfigValues`
/// and `PGDefaultSettings`).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("WALG_DOWNLOAD_CONCURRENCY", "10"),
    ("WALG_UPLOAD_CONCURRENCY", "16"),
    ("WALG_UPLOAD_DISK_CONCURRENCY", "1"),
    ("WALG_UPLOAD_QUEUE", "2"),
    ("WALG_DOWNLOAD_FILE_RETRIES", "15"),
    ("WALG_PREVENT_WAL_OVERWRITE", "false"),
    ("WALG_UPLOAD_WAL_METADATA", "NOMETADATA"),
    ("WALG_DELTA_MAX_STEPS", "0"),
    ("WALG_COMPRESSION_METHOD", "lz4"),
    ("WALG_USE_WAL_DELTA", "false"),
    ("WALG_TAR_SIZE_THRESHOLD", "1073741823"),
    ("WALG_TAR_DISABLE_FSYNC", "false"),
    ("TOTAL_BG_UPLOADED_LIMIT", "32"),
    ("WALG_LIBSODIUM_KEY_TRANSFORM", "none"),
    ("WALG_LOG_LEVEL", "NORMAL"),
    ("WALG_PG_WAL_SIZE", "16"),
    ("WALG_PG_WAL_PAGE_SIZE", "8192"),
    ("WALG_PG_BLOCK_SIZE", "8192"),
    ("PGBACKREST_STANZA", "main"),
    ("PGAPPNAME", "wal-g"),
    ("S3_MAX_PART_SIZE", "20971520"),
    ("S3_MAX_RETRIES", "15"),
    ("S3_STORAGE_CLASS", "STANDARD"),
    ("AWS_S3_FORCE_PATH_STYLE", "false"),
];

/// Settings whose values are secrets: shown as `--HIDDEN--`, never logged.
/// Case does not matter (nested config sections keep the file's case in
/// spirit), and any name that says it holds a password, secret, token or
/// passphrase counts, so a section's storage credentials are hidden too.
pub fn is_secret(name: &str) -> bool {
    const SECRETS: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_ACCESS_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "AWS_SESSION_TOKEN",
        "PGPASSWORD",
        "LIBSODIUM_KEY",
        "PGP_KEY",
        "PGP_KEY_PASSPHRASE",
        "ENVELOPE_PGP_KEY",
        "SSH_PASSWORD",
        "OS_PASSWORD",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "OSS_ACCESS_KEY_ID",
        "OSS_ACCESS_KEY_SECRET",
        "OSS_SESSION_TOKEN",
        "S3_SSE_C",
        "GCS_ENCRYPTION_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GPG_KEY_ID",
        "REDIS_PASSWORD",
        "PGBACKREST_REPO1_CIPHER_PASS",
    ];
    const WORDS: &[&str] = &["PASSWORD", "SECRET", "TOKEN", "PASSPHRASE", "CREDENTIAL"];
    let upper = name.to_uppercase();
    let bare = upper
        .strip_prefix("WALG_")
        .or_else(|| upper.strip_prefix("WALE_"))
        .unwrap_or(&upper);
    SECRETS.contains(&upper.as_str())
        || SECRETS.contains(&bare)
        || WORDS.iter().any(|w| upper.contains(w))
}

/// Settings that hold structure (a map of maps) rather than one value;
/// WAL-G's `complexSettings`.
pub const STRUCTURED: &[&str] = &["WALG_FAILOVER_STORAGES", "WALG_STATSD_EXTRA_TAGS"];

/// WAL-G's storage prefixes (`WALG_` or `WALE_` + bare name) in the order
/// it tries them, with the backend's name and whether walden has it.
/// WAL-G takes the first one set and ignores the rest without a word.
pub const STORAGE_PREFIXES: &[(&str, &str, bool)] = &[
    ("OSS_PREFIX", "Alibaba OSS", false),
    ("S3_PREFIX", "S3", true),
    ("FILE_PREFIX", "file", true),
    ("GS_PREFIX", "Google Cloud Storage", false),
    ("AZ_PREFIX", "Azure", false),
    ("SWIFT_PREFIX", "Swift", false),
    ("SSH_PREFIX", "SSH", false),
];

/// Settings walden does not implement yet and whose absence would change
/// who can read the data, where it goes, or under whose name it is
/// written: setting one is an error before anything is read or written.
/// A name ending in `*` covers every setting starting with it.
///
/// Known settings walden leaves alone because they only tune speed or
/// logging, or belong to commands walden does not have yet (which refuse
/// to run): --turbo, WALG_UPLOAD_QUEUE, S3_USE_LIST_OBJECTS_V1,
/// S3_LOG_LEVEL, S3_SKIP_VALIDATION, S3_RANGE_BATCH_ENABLED,
/// S3_RANGE_MAX_RETRIES, WALG_USE_WAL_DELTA and WALG_FORCE_WAL_DELTA (WAL-G
/// then also writes delta maps at wal-push; walden writes none and its
/// deltas use WAL summaries or a page scan: `backup/delta/wal_delta.rs`),
/// WALG_DELTA_*, WALG_TAR_*, WALG_*_COMPOSER, WALG_DIRECT_IO*,
/// WALG_SERIALIZER_TYPE,
/// PG_READY_RENAME, WALG_CSE_KMS_REGION (only with WALG_CSE_KMS_ID).
/// The storage backends walden lacks (GS, Azure, Swift, SSH, OSS) are
/// refused through [`STORAGE_PREFIXES`], and their credentials matter
/// only with their prefix.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "WALG_PGP_*",
        "PGP encryption is not built; the data would be stored unencrypted",
    ),
    (
        "WALG_ENVELOPE_PGP_*",
        "envelope PGP encryption is not built; the data would be stored unencrypted",
    ),
    (
        "WALG_CSE_KMS_ID",
        "client-side KMS encryption is not built; the data would be stored unencrypted",
    ),
    (
        "YC_CSE_KMS_KEY_ID",
        "Yandex Cloud KMS encryption is not built; the data would be stored unencrypted",
    ),
    (
        "WALG_GPG_KEY_ID",
        "GPG encryption is not built; the data would be stored unencrypted",
    ),
    (
        "WALE_GPG_KEY_ID",
        "GPG encryption is not built; the data would be stored unencrypted",
    ),
    (
        "S3_SSE_C",
        "S3 SSE-C (customer key) headers are not sent yet; S3 would store the objects without your key",
    ),
    (
        "WALG_S3_SSE_C",
        "S3 SSE-C (customer key) headers are not sent yet; S3 would store the objects without your key",
    ),
    (
        "WALE_S3_SSE_C",
        "S3 SSE-C (customer key) headers are not sent yet; S3 would store the objects without your key",
    ),
    (
        "WALG_FAILOVER_STORAGES*",
        "failover storages are not built; walden would use only the primary storage",
    ),
    (
        "WALG_STATSD_*",
        "statsd metrics are not built; nothing would be sent",
    ),
    (
        "AWS_ROLE_ARN",
        "assuming an IAM role is not built; requests would be made with the plain keys' identity instead",
    ),
    (
        "S3_ENDPOINT_SOURCE",
        "fetching the S3 endpoint from a URL is not built; requests would go to another host",
    ),
    (
        "WALG_S3_ENDPOINT_SOURCE",
        "fetching the S3 endpoint from a URL is not built; requests would go to another host",
    ),
    (
        "S3_ENDPOINT_PORT",
        "the endpoint port setting is not built; requests would go to another port",
    ),
    (
        "WALG_S3_ENDPOINT_PORT",
        "the endpoint port setting is not built; requests would go to another port",
    ),
];

/// Every setting name WAL-G's PostgreSQL binary accepts (the ones a config
/// file may hold without a warning, and the ones `--long-flag` overrides).
pub const KNOWN: &[&str] = &[
    // common
    "WALG_DOWNLOAD_CONCURRENCY",
    "WALG_UPLOAD_CONCURRENCY",
    "WALG_UPLOAD_DISK_CONCURRENCY",
    "WALG_UPLOAD_QUEUE",
    "WALG_DOWNLOAD_FILE_RETRIES",
    "WALG_PREVENT_WAL_OVERWRITE",
    "WALG_UPLOAD_WAL_METADATA",
    "WALG_DELTA_MAX_STEPS",
    "WALG_DELTA_ORIGIN",
    "WALG_DELTA_FROM_NAME",
    "WALG_DELTA_FROM_USER_DATA",
    "WALG_FETCH_TARGET_USER_DATA",
    "WALG_COMPRESSION_METHOD",
    "WALG_ZSTD_LEVEL",
    "WALG_USE_WAL_DELTA",
    "WALG_FORCE_WAL_DELTA",
    "WALG_TAR_SIZE_THRESHOLD",
    "WALG_TAR_DISABLE_FSYNC",
    "TOTAL_BG_UPLOADED_LIMIT",
    "WALG_SENTINEL_USER_DATA",
    "WALG_PREFETCH_DIR",
    "WALG_LOG_LEVEL",
    "WALG_LOG_DESTINATION",
    "WALG_STORAGE_PREFIX",
    "WALG_NETWORK_RATE_LIMIT",
    "WALG_DISK_RATE_LIMIT",
    "WALG_PG_WAL_SIZE",
    "WALG_PG_WAL_PAGE_SIZE",
    "WALG_PG_BLOCK_SIZE",
    "WALG_SLOTNAME",
    "WALG_USE_REVERSE_UNPACK",
    "WALG_SKIP_REDUNDANT_TARS",
    "WALG_VERIFY_PAGE_CHECKSUMS",
    "WALG_STORE_ALL_CORRUPT_BLOCKS",
    "WALG_USE_RATING_COMPOSER",
    "WALG_USE_COPY_COMPOSER",
    "WALG_USE_DATABASE_COMPOSER",
    "WALG_WITHOUT_FILES_METADATA",
    "WALG_DIRECT_IO",
    "WALG_DIRECT_IO_BLOCK_COUNT",
    "WALG_INTEGRITY_MAX_DELAYED_WALS",
    "WALG_STOP_BACKUP_TIMEOUT",
    "WALG_ALIVE_CHECK_INTERVAL",
    "WALDEN_RETENTION_WINDOW",
    "WALDEN_S3_COPY_PART_SIZE",
    "WALDEN_DELTA_SUMMARIES",
    "WALG_DISABLE_PARTIAL_RESTORE",
    "WALG_DAEMON_WAL_UPLOAD_TIMEOUT",
    "WALG_SERIALIZER_TYPE",
    "WALG_STATSD_ADDRESS",
    "WALG_STATSD_EXTRA_TAGS",
    "WALG_FAILOVER_STORAGES",
    "WALG_FAILOVER_STORAGES_CHECK",
    "WALG_FAILOVER_STORAGES_CHECK_TIMEOUT",
    "WALG_FAILOVER_STORAGES_CHECK_SIZE",
    "WALG_FAILOVER_STORAGES_CACHE_LIFETIME",
    "PG_READY_RENAME",
    "PGBACKREST_STANZA",
    "PGBACKREST_REPO1_CIPHER_PASS",
    // encryption
    "WALG_LIBSODIUM_KEY",
    "WALG_LIBSODIUM_KEY_PATH",
    "WALG_LIBSODIUM_KEY_TRANSFORM",
    "WALG_PGP_KEY",
    "WALG_PGP_KEY_PATH",
    "WALG_PGP_KEY_PASSPHRASE",
    "WALG_ENVELOPE_PGP_KEY",
    "WALG_ENVELOPE_PGP_KEY_PATH",
    "WALG_CSE_KMS_ID",
    "WALG_CSE_KMS_REGION",
    "WALG_GPG_KEY_ID",
    "WALE_GPG_KEY_ID",
    // PostgreSQL connection
    "PGDATA",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLKEY",
    "PGSSLCERT",
    "PGSSLROOTCERT",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    // storages
    "WALG_FILE_PREFIX",
    "WALG_S3_PREFIX",
    "WALE_S3_PREFIX",
    "WALG_GS_PREFIX",
    "WALG_AZ_PREFIX",
    "WALG_SWIFT_PREFIX",
    "WALG_SSH_PREFIX",
    "WALG_OSS_PREFIX",
    "AWS_ACCESS_KEY_ID",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT",
    "AWS_S3_FORCE_PATH_STYLE",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "S3_STORAGE_CLASS",
    "S3_SSE",
    "S3_SSE_C",
    "S3_SSE_KMS_ID",
    "S3_MAX_PART_SIZE",
    "S3_MAX_RETRIES",
    "S3_CA_CERT_FILE",
    "WALG_S3_CA_CERT_FILE",
    "S3_SKIP_VALIDATION",
    "S3_USE_LIST_OBJECTS_V1",
    "S3_LOG_LEVEL",
    "S3_ENDPOINT_SOURCE",
    "S3_ENDPOINT_PORT",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "YC_CSE_KMS_KEY_ID",
];
