"""Widgets shared by several pages (no science: the values go to rcvcore as they are)."""
from __future__ import annotations

from app import guard, services


def _PATH_HELP() -> str | None:
    if not guard.served():
        return None
    return ("On this server, paths are read from its data folder (relative paths start there)."
            if guard.data_root() else "Paths are turned off on this server.")


def dataset_picker(where, datasets: list[dict], prefix: str, *, default: str | None = None,
                   describe: bool = False, options: dict | None = None
                   ) -> tuple[str | None, dict]:
    """Dataset kind, its path (required or optional) and its loader options.

    Args:
        where: ``st`` or a container (column, sidebar) to draw in.
        datasets: :func:`services.dataset_catalogue`.
        prefix: widget-key prefix (``scan`` / ``train``); keys are ``<prefix>_dataset``,
            ``<prefix>_ds_path_<kind>`` and ``<prefix>_ds_opts_<kind>``.
        default: the spec selected at first (``demo-he``, ``folder:PATH``: kind and path).
        options: loader options filled in at first.
        describe: show the kind's one-line description.

    Returns:
        (the ``--dataset`` spec, or None while a required path is missing or the options do
        not parse; the loader options).
    """
    names = [d["name"] for d in datasets]
    by_name = {d["name"]: d for d in datasets}
    default, _, path0 = (default or "").partition(":")
    name = where.selectbox("Dataset", names, key=f"{prefix}_dataset",
                           index=names.index(default) if default in names else 0,
                           format_func=lambda n: n + (":PATH" if by_name[n]["needs_path"] else ""))
    ds = by_name[name]
    if describe:
        where.caption(ds["description"])
    spec: str | None = name
    if ds["needs_path"]:
        path = where.text_input(f"Path of the {name} dataset", key=f"{prefix}_ds_path_{name}",
                                value=path0 if name == default else "", help=_PATH_HELP())
        spec = f"{name}:{path.strip()}" if path.strip() else None
    elif ds["path_optional"]:
        path = where.text_input(f"Source file for {name} (optional)",
                                value=path0 if name == default else "",
                                key=f"{prefix}_ds_path_{name}")
        spec = f"{name}:{path.strip()}" if path.strip() else name
    text = where.text_input(
        "Dataset options", key=f"{prefix}_ds_opts_{name}",
        value="; ".join(f"{k}={v}" for k, v in (options or {}).items()) if name == default
        else "",
        placeholder="KEY=VALUE; KEY=VALUE" if ds["options"] else "none for this dataset",
        disabled=not ds["options"],
        help="The loader's options, as `--opt` on the command line. "
             + ("; ".join(f"`{k}` (default {v})" for k, v in ds["options"].items())
                or "This dataset takes none."))
    try:
        options = services.dataset_options(text)
        # served mode: the path under the data root, no option that widens what is read
        spec, options = guard.vet_dataset(spec, options)
    except Exception as e:  # rcvcore's message names the bad item
        where.error(guard.redact(str(e)))
        return None, {}
    return spec, options
