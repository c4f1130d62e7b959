@echo off
rem Starts the Workflow Orchestration Service on Windows (same as start.sh; --role api|worker|prefect).
cd /d "%~dp0"
if not exist .venv\Scripts\python.exe (
  py -3 -m venv .venv || python -m venv .venv || exit /b 1
)
.venv\Scripts\python.exe -m pip install -q --disable-pip-version-check -r requirements.txt || exit /b 1
.venv\Scripts\python.exe start_service.py %*
