"""The ground floor: the one error every layer raises for bad user input."""


class ConfigError(ValueError):
    """Bad user input (a config, an override, a run directory, a checkpoint); the CLI prints it
    as one line and exits with status 2."""
