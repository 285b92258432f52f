"""Execute a notebook N times with nbclient and report every stall (imagen_edu.kernel_polling).

usage: (cd book && IMAGEN_EDU_PROFILE=gpu IMAGEN_EDU_SMOKE=1 OMP_NUM_THREADS=1 \
        [FIX=1] python ../experiments/notebook_stall/hunt.py 03_ddpm.ipynb 8)

Each run's outcome goes to LOG (default /tmp/notebook_stall.log): "run K: ok Ns", or "STALL at
cell C" when one cell has run 120 s, with py-spy dumps of this process and of the kernel if
py-spy is installed. FIX=1 installs imagen_edu.kernel_polling first. Measured 2026-12-02 on
03_ddpm: without it 2 stalls in 4 runs, each ending only at nbclient's 300 s timeout; with it,
8 runs of 22-33 s and no stall.
"""
import os, sys, time, subprocess, threading, nbformat
from nbclient import NotebookClient
if os.environ.get("FIX"):
    from imagen_edu import kernel_polling; kernel_polling.install()
path = sys.argv[1]; runs = int(sys.argv[2])
log = open(os.environ.get("LOG", "/tmp/notebook_stall.log"), "a")
for r in range(runs):
    nb = nbformat.read(path, as_version=4)
    state = {"cell": None, "t": time.time()}
    client = NotebookClient(nb, timeout=300, resources={"metadata": {"path": os.path.dirname(path)}}, kernel_name="python3")
    def on_start(cell, cell_index):
        state.update(cell=cell_index, t=time.time())
    client.on_cell_start = on_start
    def watchdog():
        while not state.get("done"):
            time.sleep(5)
            if time.time() - state["t"] > 120 and not state.get("dumped"):
                state["dumped"] = True
                log.write(f"run {r}: STALL at cell {state['cell']}\n"); log.flush()
                out = subprocess.run(["py-spy", "dump", "--pid", str(os.getpid())], capture_output=True, text=True).stdout
                log.write(out + "\n"); log.flush()
                try:
                    kp = client.km.provisioner.process.pid
                    out = subprocess.run(["py-spy", "dump", "--pid", str(kp)], capture_output=True, text=True).stdout
                    log.write("KERNEL\n" + out + "\n"); log.flush()
                except Exception as e:
                    log.write(f"no kernel pid {e}\n")
    th = threading.Thread(target=watchdog, daemon=True); th.start()
    t0 = time.time()
    try:
        client.execute()
        log.write(f"run {r}: ok {time.time()-t0:.0f}s\n")
    except Exception as e:
        log.write(f"run {r}: {type(e).__name__} at cell {state['cell']} {str(e)[:200]}\n")
    state["done"] = True
    log.flush()
