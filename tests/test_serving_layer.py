"""The serving layer sits below builders, eval and training: it imports none of them, runs without TRL, is the one
place a VLM is loaded and prompted for generation, and the Space it serves installs no TRL."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from support.tiny_silkie import tiny_silkie

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "vlfeedback_kit" / "serving.py"


def kit_imports(path: Path) -> set[str]:
    """The vlfeedback_kit modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlfeedback_kit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vlfeedback_kit"))
    return found


def test_serving_imports_no_training_builders_or_eval():
    upper = ("vlfeedback_kit.training", "vlfeedback_kit.builders", "vlfeedback_kit.eval", "vlfeedback_kit.cards")
    assert sorted(m for m in kit_imports(SERVING) if m.startswith(upper)) == []


def test_serving_loads_and_generates_with_trl_blocked(tmp_path):
    """What the Space runs (load, both sides in one pass, n samples) works with TRL missing, and never imports
    vlfeedback_kit.training (whose import checks TRL's version)."""
    _, run = tiny_silkie(tmp_path)
    script = f"""
import sys
sys.modules["trl"] = None
from PIL import Image
from vlfeedback_kit import serving
import vlfeedback_kit.eval.arena.ui
served = serving.load(None, adapter={str(run)!r})
image = Image.new("RGB", (56, 56), "red")
both = serving.generate_both(served, [(image, "What colour?")], serving.GenerationSettings(max_new_tokens=3))
drawn = serving.sample(served, [(image, "What colour?")], 2, serving.GenerationSettings(3, temperature=1.0))
import json
print(json.dumps([len(both[0]), len(drawn[0]), sorted(m for m in sys.modules if m.startswith("vlfeedback_kit."))]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    answers, draws, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert answers == 1 and draws == 2
    assert not [m for m in modules if m.startswith(("vlfeedback_kit.training", "vlfeedback_kit.builders"))]


def test_only_the_serving_layer_loads_and_prompts_a_vlm():
    """Decode, eval and the arena hold no second copy of the loader or the chat-template code: no module outside
    vlfeedback_kit/serving.py (and training, which prompts for DPO, not generation) calls ``apply_chat_template``,
    ``PeftModel.from_pretrained`` or ``AutoProcessor.from_pretrained`` (the benches' tiny-model builders aside)."""
    offenders = []
    for folder in ("builders", "eval", "cards", "vlfeedback_kit", "spaces"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == SERVING or path.name.endswith("bench.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Attribute):
                    continue
                owner = getattr(node.value, "id", None)
                if node.attr == "apply_chat_template" or (
                    node.attr == "from_pretrained" and owner in ("PeftModel", "AutoProcessor")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_space_requirements_list_no_trl():
    """The generated requirements and the checked-in Space folder's name the wheel without the [train] extra and
    the serving libraries at the kit's pins, TRL not among them; the two agree."""
    from vlfeedback_kit.eval.arena.publish import SERVING_LIBRARIES, space_requirements

    checked_in = (ROOT / "spaces" / "silkie-vs-base" / "requirements.txt").read_text().splitlines()
    lines = [line for line in checked_in if line and not line.startswith("#")]
    wheel = lines[0].removeprefix("./wheels/")
    generated = [line for line in space_requirements(wheel).splitlines() if not line.startswith("#")]
    assert lines == generated
    for requirement in lines:
        assert "[" not in requirement and not requirement.lower().startswith("trl")
    named = {line.split("<")[0].split(">")[0].split("=")[0] for line in lines[1:]}
    assert named == {*SERVING_LIBRARIES, "spaces"}
