from telephony_bridge.cli import main

main()
