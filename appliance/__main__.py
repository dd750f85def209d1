"""`python -m appliance`: the same command line as `berth`."""

from appliance.cli import main

main()
