public enum KeelKitPlaceholder {}
