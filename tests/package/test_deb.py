"""The .deb: what it is called, what it holds, what it depends on, and lintian's verdict."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import xdp_ip_counter
from xdp_ip_counter.web.config import OPTIONAL_MODULES

from .deb import REPO, BuiltDeb

BPF_SOURCES = sorted((REPO / "bpf").glob("*.[ch]"))
RULES = REPO / "packaging" / "prometheus" / "xdp-ip-counter.rules.yml"

UNIT = "xdp-ip-counter.service"
CONFIG = "/etc/xdp-ip-counter/config.toml"


def test_deb_is_named_and_versioned_after_the_python_package(built_deb: BuiltDeb) -> None:
    version = xdp_ip_counter.__version__
    assert built_deb.path.name == f"xdp-ip-counter_{version}_all.deb"
    assert built_deb.field("Package") == "xdp-ip-counter"
    assert built_deb.field("Version") == version
    assert built_deb.field("Architecture") == "all"


def relations(field: str) -> list[str]:
    """The groups of a Depends-like field ("a | b (>= 1)", ...), as written."""
    return [group.strip() for group in field.split(",") if group.strip()]


def package_names(field: str) -> set[str]:
    """Every package a Depends-like field names, alternatives included."""
    return {
        alternative.split()[0].split(":")[0]
        for group in relations(field)
        for alternative in group.split("|")
    }


def test_deb_depends_on_debians_bcc_and_libraries(built_deb: BuiltDeb) -> None:
    depends = relations(built_deb.field("Depends"))
    for package in (
        "procps",  # /bin/kill, for the unit's ExecReload=
        "python3-bpfcc",  # by hand in control: not in pyproject (PyPI's "bcc" is another thing)
        "python3-prometheus-client",  # these three from pyproject, through dh-python
        "python3-sdnotify",
        "python3-numpy",
    ):
        assert package in depends, f"Depends lacks {package}: {depends}"
    assert "python3:any (>= 3.11~)" in depends, depends  # tomllib
    recommends = relations(built_deb.field("Recommends"))
    for package in ("python3-bcrypt", "python3-yaml"):  # pyproject's `web` extra
        assert package in recommends, f"Recommends lacks {package}: {recommends}"
    assert recommends[-1].startswith("linux-headers-amd64 | "), recommends


def third_party_imports() -> set[str]:
    """Top-level names of the libraries the package imports, anywhere in its modules."""
    names: set[str] = set()
    for module in (REPO / "xdp_ip_counter").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {
        name
        for name in names
        if name not in sys.stdlib_module_names and name not in {"__future__", "xdp_ip_counter"}
    }


def canonical(distribution: str) -> str:
    """A distribution name as PEP 503 compares them (PyYAML -> pyyaml, prometheus_client ->
    prometheus-client)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0])


def test_every_imported_library_is_a_dependency(built_deb: BuiltDeb) -> None:
    """Every library the package imports is in the built .deb's Depends (the `web` extra's in
    its Recommends, and not in Depends), and pyproject declares each one the .deb got from it:
    a new import, or a pyproject entry nothing imports, fails here."""
    depends = built_deb.field("Depends")
    recommends = built_deb.field("Recommends")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(r) for r in project["dependencies"]}
    web_extra = {requirement_name(r) for r in project["optional-dependencies"]["web"]}
    distributions_of = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"bcc", "prometheus_client", "numpy", "yaml", "bcrypt"} <= imports, imports
    from_pyproject: set[str] = set()
    for name in sorted(imports):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"xdp_ip_counter imports {name}: not installed"
        owner = subprocess.run(
            ["dpkg-query", "--search", spec.origin], capture_output=True, text=True, check=False
        )
        assert owner.returncode == 0, f"{name} ({spec.origin}) is not from a Debian package"
        package = owner.stdout.split(":")[0]
        # Debian's egg-info files say no modules (sdnotify's): those are named like the module.
        distributions = {canonical(d) for d in distributions_of.get(name, [name])}
        if name == "bcc":  # Debian's python3-bpfcc, named by hand in control (see there)
            assert not distributions & (declared | web_extra), "pyproject must not name bcc"
            assert package in package_names(depends), f"{package} not in Depends: {depends}"
        elif distributions & web_extra:
            assert package in package_names(recommends), f"{name}: {package} not in {recommends}"
            assert package not in package_names(depends), f"{name} is optional: {depends}"
            assert OPTIONAL_MODULES[name][1] == package, f"web/config.py names {name}'s package"
        else:
            assert distributions & declared, f"imports {name} ({distributions}): not in pyproject"
            assert package in package_names(depends), f"imports {name}, from {package}: {depends}"
        from_pyproject |= distributions & (declared | web_extra)
    assert from_pyproject == declared | web_extra, "pyproject declares what nothing imports"


def test_deb_installs_program_module_bpf_source_unit_and_config(built_deb: BuiltDeb) -> None:
    paths = built_deb.paths()
    expected = {
        "/usr/bin/xdp-ip-counter",
        "/usr/lib/python3/dist-packages/xdp_ip_counter/__main__.py",
        f"/lib/systemd/system/{UNIT}",
        CONFIG,
        "/usr/share/man/man8/xdp-ip-counter.8.gz",
        "/usr/share/doc/xdp-ip-counter/copyright",
        "/usr/share/doc/xdp-ip-counter/README.md",
    }
    # Every file of bpf/: the program and the headers it includes.
    expected |= {f"/usr/share/xdp-ip-counter/bpf/{path.name}" for path in BPF_SOURCES}
    assert len(BPF_SOURCES) >= 3, BPF_SOURCES
    expected.add(f"/usr/share/xdp-ip-counter/prometheus/{RULES.name}")
    assert expected <= paths, f"missing from the .deb: {sorted(expected - paths)}"
    # Every module of the checkout is shipped, the subpackages' too.
    for module in sorted((REPO / "xdp_ip_counter").rglob("*.py")):
        shipped = module.relative_to(REPO).as_posix()
        assert f"/usr/lib/python3/dist-packages/{shipped}" in paths, module
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]


def test_deb_ships_the_checkouts_unit_config_and_bpf_source_unchanged(
    built_deb: BuiltDeb,
) -> None:
    pairs = {
        f"lib/systemd/system/{UNIT}": REPO / "systemd" / UNIT,
        CONFIG.lstrip("/"): REPO / "packaging" / "config.toml",
        **{f"usr/share/xdp-ip-counter/bpf/{path.name}": path for path in BPF_SOURCES},
        f"usr/share/xdp-ip-counter/prometheus/{RULES.name}": RULES,
    }
    for packaged, source in pairs.items():
        assert built_deb.data_file(packaged) == source.read_bytes(), packaged


def test_config_is_the_only_conffile(built_deb: BuiltDeb) -> None:
    assert built_deb.control_file("conffiles").split() == [CONFIG]


def test_maintainer_scripts_enable_the_unit_but_do_not_start_it(built_deb: BuiltDeb) -> None:
    postinst = built_deb.control_file("postinst")
    prerm = built_deb.control_file("prerm")
    postrm = built_deb.control_file("postrm")
    assert f"deb-systemd-helper enable '{UNIT}'" in postinst
    # Not started on a first install; restarted after an upgrade only if it was running.
    assert re.search(r"deb-systemd-invoke\s+start\b", postinst) is None, postinst
    assert f"deb-systemd-invoke try-restart '{UNIT}'" in postinst
    # Stopped on removal, forgotten on purge.
    assert re.search(rf'"\$1" = remove.*\n\s*deb-systemd-invoke stop {UNIT}', prerm), prerm
    assert f"deb-systemd-helper purge '{UNIT}'" in postrm


def test_lintian_reports_no_errors_and_no_warnings(built_deb: BuiltDeb) -> None:
    result = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--no-tag-display-limit", str(built_deb.path)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert result.returncode == 0 and not tags, f"lintian:\n{result.stdout}{result.stderr}"


def test_every_lintian_override_gives_its_reason() -> None:
    for overrides in Path(REPO / "packaging" / "debian").glob("*lintian-overrides"):
        lines = overrides.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                previous = lines[number - 1] if number else ""
                assert previous.startswith("#"), f"{overrides.name}:{number + 1} has no reason"


def readme_section(heading: str) -> str:
    """The text of one README.md section, from its heading to the next of the same level."""
    text = (REPO / "README.md").read_text()
    level = heading.split(" ", maxsplit=1)[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    return text[start : end if end >= 0 else len(text)]


def named_packages(text: str) -> set[str]:
    """The Debian packages a text names in backticks (`python3-...`, `procps`)."""
    return set(re.findall(r"`(python3-[a-z0-9.-]+|procps)`", text))


def test_readme_names_the_packages_the_deb_depends_on(built_deb: BuiltDeb) -> None:
    """The README's lists of dependencies are checked against the built package, both ways."""
    relations = package_names(built_deb.field("Depends")) | package_names(
        built_deb.field("Recommends")
    )
    dependencies = {name for name in relations if re.fullmatch(r"python3-.*|procps", name)}
    assert {"python3-bpfcc", "procps"} <= dependencies, dependencies
    described = named_packages(readme_section("### The Debian package"))
    assert described == dependencies, "### The Debian package names other packages than the .deb"
    installing = named_packages(readme_section("## Installing"))
    assert installing <= dependencies, f"## Installing names {installing - dependencies}"


def test_readme_package_scan_sees_a_stray_package() -> None:
    assert named_packages("needs `python3-foo` and `procps`, not python3-bar") == {
        "python3-foo",
        "procps",
    }
