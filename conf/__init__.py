"""YAML settings shipped with the package: local.yml (the default) and the dev/prod overlays."""
