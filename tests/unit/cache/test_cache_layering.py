import subprocess
import sys


def test_cache_package_imports_no_ray_or_serve():
    code = "import sys, cache; bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
