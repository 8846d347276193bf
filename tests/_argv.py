"""Command lines for the tests, written as keywords."""


def flags(**settings) -> list[str]:
    """The command-line flags for `settings`, in order: flags(data_dir=d, no_verify=True, epochs=2)
    is ["--data-dir", str(d), "--no-verify", "--epochs", "2"]. True gives the flag alone; every
    other value is written with str()."""
    argv = []
    for name, value in settings.items():
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv
