pub fn run_fetch(
    _s: &crate::config::Settings,
    _a: Vec<std::ffi::OsString>,
) -> crate::error::Result<()> {
    Ok(())
}
