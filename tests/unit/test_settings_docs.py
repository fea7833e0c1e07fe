"""Every copy of the settings outside config.SETTINGS agrees with it: the README's flag and key
tables, the packaged config.toml, the Ansible role (defaults, template, README, vars), and the
figure of kernel memory per table entry wherever the docs give it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from xdp_ip_counter.config import RESTART_FIELDS, SETTING_BY_KEY, SETTINGS, Setting, load_file
from xdp_ip_counter.layout import SET_DTYPE, WAYS
from xdp_ip_counter.table import SLOTS_PER_ENTRY, sets_for

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PACKAGED_CONFIG = REPO / "packaging" / "config.toml"
ROLE = REPO / "ansible" / "roles" / "xdp_ip_counter"

# What the role does not set from a variable of its own: refresh_interval goes through
# xdp_ip_counter_extra_settings, web_config_file is written when xdp_ip_counter_web_config is set.
ROLE_WITHOUT_VARIABLE = {"refresh_interval", "web_config_file"}

# Kernel memory per entry of the sources table: an array map (BPF_F_MMAPABLE) of 576-byte sets of
# 8 slots (a line of 8 tag words, then 8 slots of 64 bytes: the 32-byte value, the 24-byte key,
# 8 unused bytes), so 72 bytes per slot, and 1.5 slots per entry of max_entries (table.sets_for:
# whole blocks of sets, or a power of two of them for small tables); the array's elements are
# all the memory it charges, apart from its header and the rounding up to a page.
KERNEL_BYTES_PER_ENTRY = 108
DEFAULT_MAX_ENTRIES = SETTING_BY_KEY["max_entries"].default
DEFAULT_TABLE_BYTES = sets_for(DEFAULT_MAX_ENTRIES) * SET_DTYPE.itemsize

TOML_TYPE_NAMES = {int: "integer", str: "string", bool: "boolean", list: "list of"}


def section(text: str, heading: str) -> str:
    """The text under a '## heading' up to the next heading of that level or higher."""
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", maxsplit=1)[0]
    following = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE)
    end = following.search(text, start + len(heading) + 2)
    return text[start : end.start() if end else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a Markdown table's rows (header and rule left out)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    rows = [row for row in rows if not re.fullmatch(r"[|: -]+", row)]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def visible(setting: Setting) -> bool:
    return setting.help is not None


def invocation(setting: Setting) -> str:
    """The flag as --help and the README's flag table show it: "-w, --window <WINDOW>"."""
    text = ", ".join(setting.flags)
    return f"{text} <{setting.metavar}>" if setting.metavar else text


def toml_value(tmp_path: Path, key: str, text: str) -> object:
    """A value written in TOML, read by the daemon's own loader (typed as the field)."""
    path = tmp_path / f"{key}.toml"
    path.write_text(f"{key} = {text}\n")
    return load_file(path)[key]


# ------------------------------------------------------------------------------------------
# README.md


def test_readme_flag_table_is_the_declared_flags() -> None:
    rows = table_rows(section(README.read_text(), "## Command line"))
    by_flag = {backticked(row[0])[0]: row for row in rows}
    for setting in SETTINGS:
        if not visible(setting):
            assert not any(flag in by_flag for flag in setting.flags), setting.key
            continue
        row = by_flag.pop(invocation(setting), None)
        assert row is not None, f"README's flag table has no row `{invocation(setting)}`"
        shown_default = row[1].replace("`", "")
        expected = setting.default_text if setting.metavar else "off"
        assert shown_default.startswith(expected), (setting.key, row[1], expected)
    # What is left are the flags that are not settings.
    assert sorted(by_flag) == sorted(
        ["-c, --config <PATH>", "--check-config", "-V, --version", "-h, --help"]
    )


def test_readme_key_table_is_the_declared_keys(tmp_path: Path) -> None:
    rows = table_rows(section(README.read_text(), "## Configuration file"))
    by_key = {backticked(row[0])[0]: row for row in rows}
    assert sorted(by_key) == sorted(SETTING_BY_KEY)
    for key, (_, kind, default, meaning) in by_key.items():
        setting = SETTING_BY_KEY[key]
        assert all(kind.startswith(TOML_TYPE_NAMES[t]) for t in setting.file_types), (key, kind)
        # The Default column's first `value`, read as TOML, is the default.
        assert toml_value(tmp_path, key, backticked(default)[0]) == setting.default, key
        assert ("*restart*" in meaning) == setting.restart, f"{key}: *restart* marker"
        if visible(setting):
            assert f"Flag `{setting.flag}`" in meaning, key
        else:
            assert "Flag " not in meaning, key


# ------------------------------------------------------------------------------------------
# packaging/config.toml


def packaged_paragraphs() -> dict[str, str]:
    """Key -> the comment paragraph that ends with its line ("key = ..." or "# key = ...")."""
    paragraphs = PACKAGED_CONFIG.read_text().split("\n\n")
    found: dict[str, str] = {}
    for paragraph in paragraphs:
        last = paragraph.strip().splitlines()[-1]
        if match := re.fullmatch(r"(?:# )?([a-z_]+) = .*", last):
            found[match.group(1)] = paragraph
    return found


def test_packaged_config_documents_every_key_as_declared() -> None:
    paragraphs = packaged_paragraphs()
    assert sorted(paragraphs) == sorted(SETTING_BY_KEY)
    for key, paragraph in paragraphs.items():
        setting = SETTING_BY_KEY[key]
        comment = " ".join(line.lstrip("# ") for line in paragraph.splitlines())
        assert ("needs a restart" in comment) == setting.restart, f"{key}: restart"
        if visible(setting):
            assert f"Flag: {setting.flag}" in comment, key
        else:
            assert "Flag:" not in comment, key


def test_packaged_config_header_names_the_restart_only_keys() -> None:
    header = PACKAGED_CONFIG.read_text().split("\n\n")[0]
    comment = " ".join(line.lstrip("# ") for line in header.splitlines())
    listed = re.search(r"Changing (.*?) needs a restart", comment)
    assert listed, "the header says which keys need a restart"
    named = set(re.findall(r"[a-z]+(?:_[a-z]+)+", listed.group(1)))
    assert named == set(RESTART_FIELDS)


# ------------------------------------------------------------------------------------------
# The Ansible role


def role_defaults() -> dict[str, object]:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def test_role_defaults_are_the_packaged_configuration() -> None:
    defaults = role_defaults()
    packaged = load_file(PACKAGED_CONFIG)
    for setting in SETTINGS:
        variable = f"xdp_ip_counter_{setting.key}"
        if setting.key in ROLE_WITHOUT_VARIABLE:
            assert variable not in defaults, variable
            continue
        assert variable in defaults, f"defaults/main.yml has no {variable}"
        value = defaults[variable]
        if isinstance(value, list):
            # The template writes a list as it is: read it as the daemon reads the file's list
            # (protocol names to numbers, prefixes to networks, ...).
            value = setting.from_file(value, variable)
        assert value == packaged[setting.key], variable


def test_role_template_writes_every_key() -> None:
    lines = (ROLE / "templates" / "config.toml.j2").read_text().splitlines()
    written = {line.split(" = ")[0]: line for line in lines if re.match(r"[a-z_]+ = ", line)}
    assert sorted(written) == sorted(set(SETTING_BY_KEY) - {"refresh_interval"})
    for key, line in written.items():
        if key not in ROLE_WITHOUT_VARIABLE:
            assert f"xdp_ip_counter_{key} " in line, line


def test_role_readme_variables_are_the_defaults_and_mark_restarts() -> None:
    text = (ROLE / "README.md").read_text()
    rows = {backticked(row[0])[0]: row for row in table_rows(section(text, "## Role variables"))}
    defaults = role_defaults()
    assert sorted(rows) == sorted(defaults)
    for variable, (_, default, meaning) in rows.items():
        assert yaml.safe_load(backticked(default)[0]) == defaults[variable], variable
        key = variable.removeprefix("xdp_ip_counter_")
        if key in SETTING_BY_KEY:
            assert ("Restart." in meaning) == SETTING_BY_KEY[key].restart, variable
    listed = re.search(r"cannot\s+apply changed \(([^)]*)\)", text)
    assert listed, "the role's README says which settings restart the service"
    assert set(backticked(listed.group(1))) == set(RESTART_FIELDS)


def test_role_restarts_for_the_declared_restart_only_settings() -> None:
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert set(role_vars["xdp_ip_counter_restart_only_settings"]) == set(RESTART_FIELDS)


def test_role_readme_does_not_list_the_package_dependencies() -> None:
    """The .deb's Depends/Recommends come from packaging/debian/control and pyproject.toml
    (tests/package/test_deb.py checks the built package against them); a copy here drifted."""
    requirements = section((ROLE / "README.md").read_text(), "## Requirements")
    assert not re.findall(r"python3-[a-z0-9-]+", requirements), requirements


# ------------------------------------------------------------------------------------------
# Kernel memory per entry


def test_kernel_memory_per_entry_is_a_slot_of_the_table_layout() -> None:
    assert SET_DTYPE.itemsize == 576
    assert SET_DTYPE.itemsize / WAYS * SLOTS_PER_ENTRY == KERNEL_BYTES_PER_ENTRY
    # the default fills whole blocks: exactly 1.5 slots per entry
    assert DEFAULT_TABLE_BYTES == KERNEL_BYTES_PER_ENTRY * DEFAULT_MAX_ENTRIES


@pytest.mark.parametrize(
    "path",
    [README, PACKAGED_CONFIG, ROLE / "defaults" / "main.yml"],
    ids=lambda path: path.relative_to(REPO).as_posix(),
)
def test_kernel_memory_per_entry_is_the_table_figure(path: Path) -> None:
    text = " ".join(line.lstrip("# ") for line in path.read_text().splitlines())
    figures = re.findall(r"(?:about )?(\d+) bytes of kernel memory per entry", text, re.I)
    assert figures, f"{path.name} gives no figure of kernel memory per entry"
    assert set(figures) == {str(KERNEL_BYTES_PER_ENTRY)}
    default_mib = round(DEFAULT_TABLE_BYTES / 2**20)
    mibs = re.findall(r"\((\d+) MiB at the default\)", text)
    assert mibs, f"{path.name} gives no size of the default table"
    assert set(mibs) == {str(default_mib)}


@pytest.mark.parametrize(
    "path",
    [PACKAGED_CONFIG, ROLE / "defaults" / "main.yml", ROLE / "README.md"],
    ids=lambda path: path.relative_to(REPO).as_posix(),
)
def test_no_doc_of_the_settings_describes_the_lru_map(path: Path) -> None:
    """The sources table is a set-associative array since issue 12: no LRU, no "least recently
    seen are evicted" (a one-packet source gives way first, and only within its set)."""
    text = " ".join(line.lstrip("# ") for line in path.read_text().splitlines())
    assert not re.search(r"\bLRU\b|least recently seen", text, re.I), path.name
