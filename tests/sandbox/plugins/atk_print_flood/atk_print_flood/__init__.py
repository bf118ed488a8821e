"""Hostile test plugin: Floods stdout with print(): many lines and one huge line."""

class Plugin:
    def handle(self, request):
        line = "y" * 1000
        for i in range(request.get("lines", 20000)):
            print(i, line)
        print("z" * request.get("huge", 3_000_000))
        return "printed"
